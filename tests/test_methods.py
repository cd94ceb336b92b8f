"""The thesis's methods through the engine: freezing, feature-map losses, WO and prev-CE,
with the reference's activation rules, checked against saved members and direct formulas."""

import json
import os

import jax
import numpy as np
import pytest

from enstransfer_jax import checkpoints
from enstransfer_jax.training import run_experiment
from tests import engine_util

FROZEN = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2')


def _member(workdir, i):
  return checkpoints.load_pretrained(os.path.join(workdir, 'members', str(i), 'checkpoint'))[1]


def _train_events(workdir):
  return [e for e in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
          if e['event'] == 'train']


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize('freeze_bn_stats', [False, True])
def test_freezing_keeps_frozen_modules_bit_identical(tmp_path, freeze_bn_stats):
  workdir = str(tmp_path)
  run_experiment(engine_util.tiny_config(star_fge=True, num_fge=3, freeze_layers=FROZEN,
                                    freeze_bn_stats=freeze_bn_stats), workdir)
  first = _member(workdir, 1)
  for k in (2, 3):
    member = _member(workdir, k)
    for name in ('conv1', 'bn1', 'layer1', 'layer2'):
      assert _same(member['params'][name], first['params'][name]), (k, name)
    for name in ('layer3', 'layer4', 'fc'):
      assert not _same(member['params'][name], first['params'][name]), (k, name)
    # BN running statistics of frozen modules keep updating, as in the reference, unless
    # freeze_bn_stats.
    assert _same(member['batch_stats']['layer1'], first['batch_stats']['layer1']) == freeze_bn_stats


@pytest.mark.parametrize('loss_type, regularizer', [('MSELoss', 'first'), ('RTDLoss', 'first'),
                                                    ('MSELoss', 'pretrain')])
def test_feature_map_loss_activation(tmp_path, loss_type, regularizer):
  workdir = str(tmp_path)
  # RTD's persistence runs on the host over 2n points: keep n (the batch) small.
  batch = {'batch_size': 100, 'class_subset': (0, 1, 2)} if loss_type == 'RTDLoss' else {}
  run_experiment(engine_util.tiny_config(star_fge=False, num_fge=2, fmap_loss_type=loss_type,
                                    fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.5),
                                    which_model_is_regularizer=regularizer, **batch), workdir)
  events = _train_events(workdir)
  for e in events:
    active = regularizer == 'pretrain' or e['member'] >= 2
    assert ('fmap4' in e) == active, e
    assert ('rtd_host_seconds' in e) == (active and loss_type == 'RTDLoss')
  # (Not 0 even at member 2's first step: the regulariser runs in eval mode, the member in
  # train mode with batch statistics, as in the reference.)
  assert all(e['fmap4'] > 0 for e in events if 'fmap4' in e)
  for e in events:
    assert e['loss'] == pytest.approx(e['ce'] + e.get('fmap4', 0.0), rel=1e-5)


def test_weight_orthogonality_against_the_formula(tmp_path):
  workdir = str(tmp_path)
  run_experiment(engine_util.tiny_config(star_fge=True, num_fge=3, wo_beta=10.0), workdir)
  events = _train_events(workdir)
  assert all(('wo' in e) == (e['member'] == 3) for e in events)
  # Member 3 starts from member 1; the only earlier member other than 1 is member 2.
  first_of_3 = min((e for e in events if e['member'] == 3), key=lambda e: e['step'])
  w = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(_member(workdir, 1)['params'])])
  v = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(_member(workdir, 2)['params'])])
  cos = np.dot(w, v) / (np.linalg.norm(w) * np.linalg.norm(v))
  assert first_of_3['wo'] == pytest.approx(10.0 * cos ** 2, rel=1e-4)


def test_prev_ce_is_active_from_cycle_3_with_its_sign(tmp_path):
  workdir = str(tmp_path)
  run_experiment(engine_util.tiny_config(star_fge=True, num_fge=3, prev_ce_beta=-0.1), workdir)
  events = _train_events(workdir)
  assert all(('prev_ce' in e) == (e['member'] == 3) for e in events)
  values = [e['prev_ce'] for e in events if 'prev_ce' in e]
  assert all(v < 0 for v in values)  # -0.1 x a cross-entropy
  for e in events:
    assert e['loss'] == pytest.approx(e['ce'] + e.get('prev_ce', 0.0), rel=1e-5)


def test_rtd_lite_trains_through_the_engine_without_a_host_callback(tmp_path):
  """SSE-RTD-Lite on the pooled map trains through the engine (the term is active from cycle
  2 on), and its lowered train step holds no host callback, where the exact RTD's does."""
  from enstransfer_jax import models, optim  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  config = engine_util.tiny_config(star_fge=False, num_fge=2, fmap_loss_type='RTDLiteLoss',
                                   fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.5))
  workdir = str(tmp_path / 'run')
  run_experiment(config, workdir)
  events = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [e for e in events if e['event'] == 'train']
  assert all('fmap4' not in e for e in train if e['member'] == 1)
  assert all(e['fmap4'] > 0 for e in train if e['member'] == 2)
  model = models.create_model('ResNet18', 10, width=4)
  variables = models.init_variables(model, jax.random.PRNGKey(0), 16)
  terms = step_lib.Terms(fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.5), fmap_loss_type='RTDLiteLoss')
  tx = optim.create_optimizer(config)
  state = engine_util.stacked_state([variables], tx, terms, [0], [2])
  images = np.zeros((1, 8, 16, 16, 3), np.uint8)
  batch = engine_util.full_batch(images, np.zeros((1, 8), np.int32))
  step = step_lib.make_train_step(model, tx, config, terms)
  hlo = step.lower(state, batch, {'reg': variables}).as_text()
  assert 'callback' not in hlo.lower()
  terms_rtd = step_lib.Terms(fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.5), fmap_loss_type='RTDLoss')
  step_rtd = step_lib.make_train_step(model, tx, config, terms_rtd)
  state = engine_util.stacked_state([variables], tx, terms_rtd, [0], [2])
  assert 'callback' in step_rtd.lower(state, batch, {'reg': variables}).as_text().lower()
