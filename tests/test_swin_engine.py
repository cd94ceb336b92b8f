"""Swin through the whole engine: the quickstart variant to a summary.json, freezing by stage,
resume, the predict path, and a converted PyTorch Swin fine-tuned by configs/swin_starsse.py.

Values are checked against independent computations: accuracies recomputed with numpy from
the saved probabilities, frozen modules bit-equal to the member they started from, a resumed
run equal to an uninterrupted one, and the fine-tuned member exported to torch and run by
the PyTorch twin (tests/torch_swin.py) on the test images.
"""

import json
import os
import signal

import jax
import numpy as np
import pytest
import torch

import convert_byol
from configs import quickstart_swin, swin_starsse
from enstransfer_jax import ensemble
from enstransfer_jax.data import datasets
from enstransfer_jax.training import run_experiment
from enstransfer_jax.training import step as step_lib
from tests import engine_util
from torch_swin import TorchSwin, randomize_

TEST = dict(progress=False, compilation_cache_dir='', log_every_steps=1, valid_freq=0,
            wandb_mode='disabled')


def _shrink(c, **overrides):
  for key, value in dict(TEST, **overrides).items():
    node = c
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return c


def _members(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'members')))


def _probs(workdir, i):
  return np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy'))


@pytest.fixture(scope='module')
def quickstart_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('qs_swin'))
  config = _shrink(quickstart_swin.get_config(), **{
      'pretrain.epochs': 1, 'epochs': 2, 'warmup_epochs': 1, 'num_fge': 2, 'fge_epochs': 1,
      'batch_size': 256})
  summary = run_experiment(config, workdir)
  return workdir, summary


def test_quickstart_variant_runs_to_a_summary(quickstart_run):
  workdir, summary = quickstart_run
  on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  assert _members(workdir) == [1, 2]
  for i, row in zip((1, 2), on_disk['members']):
    p = _probs(workdir, i)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(row['test_acc'], np.mean(p.argmax(1) == labels), atol=1e-9)
  both = (_probs(workdir, 1) + _probs(workdir, 2)) / 2
  np.testing.assert_allclose(on_disk['ensembles'][-1]['acc'], np.mean(both.argmax(1) == labels),
                             atol=1e-9)
  meta = json.load(open(os.path.join(workdir, 'members', '1', 'checkpoint', 'metadata.json')))
  assert meta['image_size'] == 32 and summary['name'] == 'quickstart_swin'
  train = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [r for r in train if r['event'] == 'train']
  # Soft targets (smoothing 0.1, Mixup / CutMix): the loss of 5 classes starts near ln 5.
  assert all(np.isfinite(r['loss']) for r in train) and abs(train[0]['ce'] - np.log(5)) < 0.3


def test_predict_on_a_swin_run_equals_the_saved_probabilities(quickstart_run):
  workdir, _ = quickstart_run
  config = quickstart_swin.get_config()
  data = datasets.load_dataset(config)
  ens = ensemble.Ensemble.load(workdir)
  probs = ens.member_probs(data.test_images)
  for j, i in enumerate((1, 2)):
    np.testing.assert_allclose(probs[j], _probs(workdir, i), atol=1e-5)


def _tiny_swin(**overrides):
  return engine_util.tiny_config(**dict(
      dict(model='SwinNano', width=16, image_size=16, optimizer='adamw', lr=1e-3, fge_lr=1e-3,
           wd=0.05, clip_grad=5.0, label_smoothing=0.1, **{'aug.mixup': 0.8,
                                                            'aug.cutmix': 1.0}), **overrides))


def _params(workdir, i):
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  _, v = checkpoints.load_pretrained(os.path.join(workdir, 'members', str(i), 'checkpoint'))
  return jax.device_get(v['params'])


def test_freezing_by_stage_keeps_frozen_swin_modules(tmp_path):
  workdir = str(tmp_path / 'freeze')
  run_experiment(_tiny_swin(num_fge=2, freeze_layers=('patch_embed', 'layers.0')), workdir)
  first, second = _params(workdir, 1), _params(workdir, 2)
  for name in ('patch_embed', 'layers.0'):
    for a, b in zip(jax.tree_util.tree_leaves(first[name]),
                    jax.tree_util.tree_leaves(second[name])):
      np.testing.assert_array_equal(a, b)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(first['layers.1']),
                                               jax.tree_util.tree_leaves(second['layers.1']))]
  assert min(moved) > 0


def test_bad_freeze_name_names_the_swin_modules(tmp_path):
  with pytest.raises(ValueError, match='layers.0, layers.1, norm, head'):
    run_experiment(_tiny_swin(freeze_layers=('layer1',)), str(tmp_path / 'bad'))


def test_resumed_swin_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
  overrides = dict(num_fge=2, star_fge=True, checkpoint_every_steps=1)
  whole = str(tmp_path / 'whole')
  run_experiment(_tiny_swin(**overrides), whole)
  real, calls = step_lib.make_train_step, [0]

  def make(*args):
    train_step = real(*args)

    def wrapped(*a):
      calls[0] += 1
      if calls[0] == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the run saves and stops after this step
      return train_step(*a)
    return wrapped

  monkeypatch.setattr(step_lib, 'make_train_step', make)
  resumed = str(tmp_path / 'resumed')
  with pytest.raises(Exception, match='Interrupted|member'):
    run_experiment(_tiny_swin(**overrides), resumed)
  monkeypatch.setattr(step_lib, 'make_train_step', real)
  assert not os.path.exists(os.path.join(resumed, 'summary.json'))
  run_experiment(_tiny_swin(**overrides), resumed)
  for i in (1, 2):
    np.testing.assert_array_equal(_probs(resumed, i), _probs(whole, i))


def test_converted_torch_swin_fine_tunes_through_swin_starsse(tmp_path):
  torch.manual_seed(0)
  net = randomize_(TorchSwin(10, 16, (2, 2), (2, 4), 4, 2, 32), seed=3)
  pth = tmp_path / 'swin_1.pth'
  torch.save({'model': net.state_dict()}, pth)  # the reference's checkpoint layout
  converted = tmp_path / 'swin-1'
  assert convert_byol.main([str(pth), str(converted)]) == 0
  config = _shrink(swin_starsse.get_config(), **{
      'model': 'SwinNano', 'width': 16, 'image_size': 32, 'dataset': 'digits',
      'class_subset': (5, 6, 7, 8, 9), 'ckpt': str(converted), 'epochs': 2,
      'warmup_epochs': 1, 'num_fge': 2, 'fge_epochs': 1, 'batch_size': 256,
      'eval_batch_size': 600})
  workdir = str(tmp_path / 'run')
  run_experiment(config, workdir)
  assert _members(workdir) == [1, 2]
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  for i, row in zip((1, 2), summary['members']):
    np.testing.assert_allclose(row['test_acc'], np.mean(_probs(workdir, i).argmax(1) == labels),
                               atol=1e-9)
  # The reference's drop_last: floor(n / 256) full batches per epoch, 3 epochs in all.
  data = datasets.load_dataset(config)
  steps = [json.loads(x)['step'] for x in open(os.path.join(workdir, 'metrics.jsonl'))
           if json.loads(x)['event'] == 'train']
  assert config.drop_last and steps == list(range(3 * (len(data.train_labels) // 256)))
  # Member 2 exported to torch and run by the PyTorch twin gives the saved probabilities.
  out = tmp_path / 'member2.pt'
  assert convert_byol.main(['--to-torch', os.path.join(workdir, 'members', '2', 'checkpoint'),
                            str(out)]) == 0
  twin = TorchSwin(5, 16, (2, 2), (2, 4), 4, 2, 32).eval()
  twin.load_state_dict(torch.load(out)['model_state'], strict=True)
  x = data.test_images.astype(np.float32) / 255.0
  x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  with torch.no_grad():
    logits, _ = twin(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32))
  np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), _probs(workdir, 2), atol=1e-4)


def test_parallel_members_grad_accumulation_and_feature_losses_on_swin(tmp_path):
  workdir = str(tmp_path / 'par')
  run_experiment(_tiny_swin(num_fge=3, star_fge=True, batch_size=400, grad_accum_steps=2,
                            fmap_loss_type='MSELoss', fmap_betas=(0.0, 1.0, 0.0, 0.0, 1.0)),
                 workdir)
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [r for r in lines if r['event'] == 'train']
  cycles = [r for r in train if r['member'] in (2, 3)]
  assert {r['member'] for r in cycles} == {2, 3}  # members 2 and 3 trained in one stage
  assert all('fmap1' not in r for r in train if r['member'] == 1)
  for r in cycles:  # the MSE terms of stage 1's output and the pooled vector, vs member 1
    assert np.isfinite(r['fmap1']) and np.isfinite(r['fmap4']) and r['fmap1'] >= 0
    np.testing.assert_allclose(r['loss'], r['ce'] + r['fmap1'] + r['fmap4'], rtol=1e-5)
  assert _members(workdir) == [1, 2, 3]


def test_feature_loss_on_a_missing_swin_stage_is_one_error(tmp_path):
  with pytest.raises(ValueError, match='has 2 stages'):
    run_experiment(_tiny_swin(fmap_betas=(0.0, 0.0, 1.0, 0.0, 0.0)), str(tmp_path / 'bad'))


def _torch_member(path, tmp_path, name):
  """A saved checkpoint exported by convert_byol --to-torch: its torch state dict."""
  out = tmp_path / f'{name}.pt'
  assert convert_byol.main(['--to-torch', path, str(out)]) == 0
  return torch.load(out)['model_state']


def _twin_outputs(state_dict, images):
  """(softmax probabilities, features) of the PyTorch twin (SwinNano, 5 classes, 32 px)."""
  twin = TorchSwin(5, 16, (2, 2), (2, 4), 4, 2, 32).eval()
  twin.load_state_dict(state_dict, strict=True)
  x = images.astype(np.float32) / 255.0
  x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  with torch.no_grad():
    logits, feats = twin(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32))
  flat = [None if f is None else f.reshape(len(x), -1).double().numpy() for f in feats]
  return torch.softmax(logits.double(), -1).numpy(), flat


def _numpy_linear_cka(x, y):
  x, y = x - x.mean(0), y - y.mean(0)
  return (np.linalg.norm(y.T @ x) ** 2
          / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_analysis_and_predict_of_a_swin_run(quickstart_run, tmp_path, capsys):
  """python -m enstransfer_jax.analyze and python -m enstransfer_jax.predict on the Swin
  quickstart run, checked against the PyTorch twin run on the members exported to torch:
  the soup (their state dicts averaged in torch), per-stage linear CKA (numpy), per-stage
  weight distances and the basin line's mid point (the soup of two members)."""
  from enstransfer_jax import analyze, predict  # pylint: disable=g-import-not-at-top
  workdir, _ = quickstart_run
  out = str(tmp_path / 'analysis')
  subset = 64
  assert analyze.main([workdir, '--out', out, '--subset', str(subset), '--rtd-points', '16',
                       '--rtd-batch', '0', '--line-points', '3', '--no-calibration',
                       '--quiet']) in (0, None)
  res = json.load(open(os.path.join(out, 'analysis.json')))
  report = open(os.path.join(out, 'report.md')).read()
  assert res['batchnorm'] is False and 'no statistics to recompute' in report
  data = datasets.load_dataset(quickstart_swin.get_config())
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  members = [_torch_member(os.path.join(workdir, 'members', str(i), 'checkpoint'), tmp_path,
                           f'm{i}') for i in (1, 2)]
  pre = _torch_member(os.path.join(workdir, 'pretrain', 'members', '1', 'checkpoint'),
                      tmp_path, 'pre')

  # The uniform soup: the two members' torch state dicts averaged, run by the twin.
  soup_sd = {k: (members[0][k].double() + members[1][k].double()).div(2).float()
             if members[0][k].is_floating_point() else members[0][k] for k in members[0]}
  p_soup, _ = _twin_outputs(soup_sd, data.test_images)
  nll = -np.mean(np.log(p_soup[np.arange(len(labels)), labels]))
  np.testing.assert_allclose(res['soup']['nll'], nll, rtol=1e-4)
  np.testing.assert_allclose(res['soup']['acc'], np.mean(p_soup.argmax(1) == labels), atol=1e-9)
  assert res['soup']['bn_examples'] == 0  # LayerNorm only: nothing recomputed
  # The line member 1 - member 2 at alpha 0.5 is that soup; its end points the members.
  line = {pt['alpha']: pt for pt in res['basin']['lines']['member 1 - member 2']}
  np.testing.assert_allclose(line[0.5]['loss'], nll, rtol=1e-4)
  for alpha, i in ((0.0, 1), (1.0, 2)):
    p = _probs(workdir, i)
    np.testing.assert_allclose(line[alpha]['loss'],
                               -np.mean(np.log(p[np.arange(len(labels)), labels])), rtol=1e-4)
  assert set(res['basin']['lines']) == {'member 1 - member 2', 'pretrained - member 1',
                                        'pretrained - member 2'}

  # Linear CKA of every stage the 2-stage model has (no rows for layers.2, layers.3).
  _, f1 = _twin_outputs(members[0], data.test_images[:subset])
  _, f2 = _twin_outputs(members[1], data.test_images[:subset])
  _, f0 = _twin_outputs(pre, data.test_images[:subset])
  rows = {(r['member'], r['reference'], r['layer']): r for r in res['similarity']}
  assert {k[2] for k in rows} == {'layers.0', 'layers.1', 'pooled'}
  for slot, layer in ((0, 'layers.0'), (1, 'layers.1'), (4, 'pooled')):
    for key, ref in (((2, 'member1', layer), f1), ((2, 'pretrained', layer), f0)):
      want = _numpy_linear_cka(ref[slot], f2[slot])
      np.testing.assert_allclose(1 - rows[key]['cka'], 1 - want, rtol=1e-3, atol=1e-8)
      assert np.isfinite(rows[key]['rtd']) and np.isfinite(rows[key]['rtd_lite'])

  # Weight distances per stage: the torch parameters under each module, buffers left out.
  def l2(sd, sd0, prefix):
    return np.sqrt(sum(float(((sd[k].double() - sd0[k].double()) ** 2).sum()) for k in sd
                       if k.startswith(prefix) and 'relative_position_index' not in k
                       and 'attn_mask' not in k))
  got = {(r['member'], r['stage']): r['l2'] for r in res['weights']}
  assert {s for _, s in got} == {'patch_embed', 'layers.0', 'layers.1', 'norm', 'head'}
  for i, sd in ((1, members[0]), (2, members[1])):
    for stage in ('patch_embed', 'layers.0', 'layers.1', 'norm', 'head'):
      np.testing.assert_allclose(got[(i, stage)], l2(sd, pre, stage + '.'), rtol=1e-5)

  # The predict command on the run's test split: the mean of the saved member probabilities.
  npz = str(tmp_path / 'preds.npz')
  assert predict.main([workdir, '--dataset', 'digits', '--split', 'test', '--out', npz,
                       '--show', '2']) in (0, None)
  saved = np.stack([_probs(workdir, i) for i in (1, 2)])
  with np.load(npz) as pred:
    np.testing.assert_allclose(pred['member_probs'], saved, atol=1e-5)
    np.testing.assert_allclose(pred['probs'], saved.mean(0), atol=1e-5)
    np.testing.assert_array_equal(pred['labels'], labels)
  assert 'SwinNano' in capsys.readouterr().out
