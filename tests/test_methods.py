"""The thesis's methods through the engine: freezing, feature-map losses, WO and prev-CE,
with the reference's activation rules, checked against saved members and direct formulas."""

import json
import os

import jax
import numpy as np
import pytest

from enstransfer_jax import checkpoints, losses
from enstransfer_jax.data import augment, datasets
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


@pytest.mark.parametrize('star_fge, freeze_bn_stats', [(False, False), (True, True)],
                         ids=['sse', 'starsse_frozen_bn'])
def test_freezing_keeps_frozen_modules_bit_identical(tmp_path, star_fge, freeze_bn_stats):
  """Frozen modules of cycles 2 and 3 equal member 1's (SSE: member 3 continues member 2)."""
  workdir = str(tmp_path)
  run_experiment(engine_util.tiny_config(star_fge=star_fge, num_fge=3, freeze_layers=FROZEN,
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


def _first_step_inputs(config, member, reg_variables, start_variables):
  """The PyTorch twin's features and logits on `member`'s first batch: the regulariser in
  eval mode, the member's start point in train mode (transform 'none' is deterministic)."""
  data = datasets.load_dataset(config)
  images, labels = engine_util.first_batch(config, data, member)
  x = augment.eval_transform(images, transform='none', image_size=16)
  classes = np.shape(reg_variables['params']['fc']['bias'])[0]
  reg = engine_util.torch_forward(engine_util.torch_twin(reg_variables, classes), x)
  cur = engine_util.torch_forward(engine_util.torch_twin(start_variables, classes, train=True),
                                  x)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_grad_enabled(True)
  return reg, cur, labels


def _scratch(member):
  from enstransfer_jax import models  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.models import torch_init  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import starts  # pylint: disable=g-import-not-at-top
  return torch_init.torch_drawn_variables(models.create_model('ResNet18', 10, width=4),
                                          starts.torch_seed(0, member))


@pytest.mark.parametrize('loss_type, regularizer, betas', [
    ('MSELoss', 'first', (0.0, 0.0, 0.0, 0.0, 0.5)),
    ('RTDLoss', 'first', (0.0, 0.0, 0.0, 0.0, 0.5)),
    ('MinMaxRTDLoss', 'first', (0.1, 0.2, 0.3, 0.4, 0.0)),
    ('MSELoss', 'pretrain', (0.0, 0.0, 0.0, 0.0, 0.5))])
def test_feature_map_loss_activation(tmp_path, loss_type, regularizer, betas):
  workdir = str(tmp_path)
  # RTD's persistence runs on the host over 2n points: keep n (the batch) small.
  batch = {'batch_size': 100, 'class_subset': (0, 1, 2)} if 'RTD' in loss_type else {}
  config = engine_util.tiny_config(star_fge=False, num_fge=2, fmap_loss_type=loss_type,
                                   fmap_betas=betas, which_model_is_regularizer=regularizer,
                                   **batch)
  run_experiment(config, workdir)
  events = _train_events(workdir)
  names = [f'fmap{i}' for i, b in enumerate(betas) if b]
  for e in events:
    active = regularizer == 'pretrain' or e['member'] >= 2
    assert [k for k in e if k.startswith('fmap')] == (names if active else []), e
    assert ('rtd_host_seconds' in e) == (active and 'RTD' in loss_type)
  # (Not 0 even at member 2's first step: the regulariser runs in eval mode, the member in
  # train mode with batch statistics, as in the reference.)
  assert all(e[k] > 0 for e in events for k in names if k in e)
  for e in events:
    assert e['loss'] == pytest.approx(e['ce'] + sum(e.get(k, 0.0) for k in names), rel=1e-5)
  # Each term at the first active step, from the PyTorch twin's features: member 2 starts at
  # member 1 (SSE), regularised by member 1; with 'pretrain' and no checkpoint, member 1 by
  # its own from-scratch init.
  member = 1 if regularizer == 'pretrain' else 2
  reg_vars = _scratch(1) if regularizer == 'pretrain' else _member(workdir, 1)
  (_, reg), (logits, cur), labels = _first_step_inputs(config, member, reg_vars, reg_vars)
  first = min((e for e in events if e['member'] == member), key=lambda e: e['step'])
  ce = -np.mean(np.log(engine_util.softmax(logits)[np.arange(len(labels)), labels]))
  assert first['ce'] == pytest.approx(ce, rel=1e-4)
  for i, beta in enumerate(betas):
    if not beta:
      continue
    a, b = reg[i].reshape(len(labels), -1), cur[i].reshape(len(labels), -1)
    if loss_type == 'MSELoss':
      want = beta * np.mean((a - b) ** 2)
    else:
      mode = 'minmax' if loss_type == 'MinMaxRTDLoss' else 'minimum'
      want = beta * float(losses.rtd_loss(a.astype(np.float32), b.astype(np.float32),
                                          mode=mode))
    assert first[f'fmap{i}'] == pytest.approx(want, rel=2e-3), i


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
  # Member 3's first step: -0.1 x CE(member 3's logits, argmax of member 2's), member 3
  # starting at member 1 (train mode), member 2 in eval mode; by the PyTorch twin.
  config = engine_util.tiny_config(star_fge=True, num_fge=3, prev_ce_beta=-0.1)
  (prev_logits, _), (logits, _), _ = _first_step_inputs(config, 3, _member(workdir, 2),
                                                        _member(workdir, 1))
  targets = prev_logits.argmax(-1)
  want = -0.1 * -np.mean(np.log(engine_util.softmax(logits)[np.arange(len(targets)), targets]))
  first_of_3 = min((e for e in events if e['member'] == 3), key=lambda e: e['step'])
  assert first_of_3['prev_ce'] == pytest.approx(want, rel=1e-4)


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
  step = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
  hlo = step.lower(state, batch, {'reg': variables}).as_text()
  assert 'callback' not in hlo.lower()
  terms_rtd = step_lib.Terms(fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.5), fmap_loss_type='RTDLoss')
  step_rtd = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms_rtd), tx)
  state = engine_util.stacked_state([variables], tx, terms_rtd, [0], [2])
  assert 'callback' in step_rtd.lower(state, batch, {'reg': variables}).as_text().lower()


def test_bfloat16_adamw_imagenet_transform_through_the_engine(tmp_path):
  """SSE of 2 members in bfloat16 with AdamW, torch's CyclicLR (cosine+fge) and the
  'imagenet' transform: the rate and beta1 at every logged step are the reference's; member
  1's first loss is the PyTorch twin's on the batch cropped with its stream (seed, 'augment',
  member, step); the saved members are float32 and their test probabilities the twin's on the
  'imagenet' evaluation transform (resize to 18, centre crop 16), to bfloat16 precision."""
  import jax  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import streams  # pylint: disable=g-import-not-at-top
  config = engine_util.tiny_config(star_fge=False, num_fge=2, dtype='bfloat16',
                                   optimizer='adamw', wd=0.01, scheduler='cosine+fge',
                                   transform_name='imagenet', lr=0.01, fge_lr=0.02)
  workdir = str(tmp_path)
  records = []
  with engine_util.spy_on_stages(records):
    run_experiment(config, workdir)
  events = _train_events(workdir)
  assert [(e['member'], e['step']) for e in events] == [(1, 0), (1, 1), (2, 2), (2, 3)]
  # Member 1: lr cos01(0) = lr; then CyclicLR of period 2 batches from 0.01 fge_lr up to
  # fge_lr, beta1 from 0.9 down to 0.8 (0.9 for the whole first model).
  want_lr = {0: 0.01, 1: 0.01, 2: 0.0002, 3: 0.02}
  want_beta1 = {0: 0.9, 1: 0.9, 2: 0.9, 3: 0.8}
  table = records[1]['state'].schedule
  for e in events:
    assert e['lr'] == pytest.approx(want_lr[e['step']], rel=1e-6)
    assert float(table['momentum'][0][e['step']]) == pytest.approx(want_beta1[e['step']],
                                                                   rel=1e-6)
  data = datasets.load_dataset(config)
  images, labels = engine_util.first_batch(config, data, 1)
  x = augment.train_transform(jax.random.fold_in(jax.random.fold_in(
      streams.key(0, 'augment'), 1), 0), images, transform='imagenet', image_size=16)
  start = jax.tree_util.tree_map(lambda a: np.asarray(a[0]), records[0]['state'])
  logits, _ = engine_util.torch_forward(
      engine_util.torch_twin(start.variables(), 10, train=True), x)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_grad_enabled(True)
  ce = -np.mean(np.log(engine_util.softmax(logits)[np.arange(len(labels)), labels]))
  assert events[0]['ce'] == pytest.approx(ce, rel=2e-2)
  member = _member(workdir, 2)
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(member))
  assert not _same(member['params'], start.params)
  ev = augment.eval_transform(data.test_images, transform='imagenet', image_size=16)
  want = engine_util.softmax(engine_util.torch_forward(engine_util.torch_twin(member, 10), ev)[0])
  got = np.load(os.path.join(workdir, 'members', '2', 'test_probs.npy'))
  np.testing.assert_allclose(got, want, atol=3e-2)
  assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.95
