"""The analysis command: BN recomputation vs torch, soup, basin, weights, the report end to end.

The end-to-end test builds a finished work dir by hand: a tiny ResNet-18 (width 4, 16 px
digits) as the 'pre-trained' model with a 10-class head, and three members fine-tuned in name
only (pre-trained backbone plus known perturbations, a 5-class head), with their saved
test probabilities, exactly the files run_experiment writes.
"""

import csv
import json
import os
import sys
import types

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import quickstart
from enstransfer_jax import analyze, checkpoints, evaluator, metrics, models
from enstransfer_jax.analysis import basin, compare, pipeline, soup, tables, weights
from enstransfer_jax.data import augment, datasets
import torch_resnet

SIZE = 16


def _model(num_classes=5):
  return models.create_model('ResNet18', num_classes, width=4)


def _variables(seed, num_classes=5):
  return jax.device_get(models.init_variables(_model(num_classes), jax.random.PRNGKey(seed),
                                              SIZE))


def _evaluator(model=None, batch_size=8):
  return evaluator.Evaluator(model or _model(), transform='cifar', image_size=SIZE,
                             batch_size=batch_size)


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# BatchNorm statistics, soup and lines --------------------------------------------------------


def test_recompute_bn_equals_torch_update_bn():
  """Equal-size batches: the cumulative average of torch.optim.swa_utils.update_bn."""
  variables = _variables(1)
  images = _images(24)
  new = _evaluator(batch_size=8).recompute_bn(variables, images)
  net = torch_resnet.TorchResNet('ResNet18', 5, width=4)
  net.load_state_dict(checkpoints.flax_to_torch(variables))
  x = np.asarray(augment.eval_transform(images, transform='cifar', image_size=SIZE))
  loader = [torch.from_numpy(x[i:i + 8].transpose(0, 3, 1, 2).copy()) for i in (0, 8, 16)]
  torch.optim.swa_utils.update_bn(loader, net)
  ref = checkpoints.flax_to_torch(new)
  state = net.state_dict()
  for key, value in ref.items():
    if key.endswith(('running_mean', 'running_var')):
      np.testing.assert_allclose(value.numpy(), state[key].numpy(), rtol=2e-4, atol=2e-5,
                                 err_msg=key)
  np.testing.assert_array_equal(jax.tree_util.tree_leaves(new['params'])[0],
                                jax.tree_util.tree_leaves(variables['params'])[0])


def test_recompute_bn_weights_batches_by_size():
  """A partial last batch counts by its size (the reference's update_bn momentum b/(seen+b))."""
  variables, images = _variables(2), _images(21, seed=1)
  ev = _evaluator(batch_size=8)
  got = ev.recompute_bn(variables, images)
  parts = [ev.recompute_bn(variables, images[a:b]) for a, b in ((0, 8), (8, 16), (16, 21))]
  want = jax.tree_util.tree_map(lambda *s: (8 * s[0] + 8 * s[1] + 5 * s[2]) / 21,
                                *[p['batch_stats'] for p in parts])
  for a, b in zip(jax.tree_util.tree_leaves(got['batch_stats']), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_soup_of_identical_members_is_the_member():
  member, images = _variables(3), _images(16, seed=2)
  ev = _evaluator()
  soup_probs = soup.soup_probs(ev, [member] * 3, images, images)
  own = ev.probs(ev.recompute_bn(member, images), images)
  np.testing.assert_allclose(soup_probs, own, rtol=1e-4, atol=1e-6)
  mix = soup.uniform_soup([_variables(4), _variables(5)])
  np.testing.assert_allclose(mix['params']['fc']['kernel'],
                             (_variables(4)['params']['fc']['kernel']
                              + _variables(5)['params']['fc']['kernel']) / 2, rtol=1e-6)


def test_line_end_points_and_midpoint():
  va, vb, images = _variables(6), _variables(7), _images(12, seed=3)
  labels = np.arange(12) % 5
  ev = _evaluator()
  score = lambda v: {'loss': metrics.nll(ev.probs(v, images), labels),
                     'acc': metrics.accuracy(ev.probs(v, images), labels)}
  pts = basin.line(score, va, vb, 5)
  assert [p['alpha'] for p in pts] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert pts[0]['loss'] == score(va)['loss'] and pts[-1]['loss'] == score(vb)['loss']
  mid = jax.tree_util.tree_map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2, va, vb)
  np.testing.assert_allclose(pts[2]['loss'], score(mid)['loss'], rtol=1e-5)
  # With BN recomputed, the end points are the models with recomputed statistics.
  rec = lambda v: ev.recompute_bn(v, images)
  pts = basin.line(score, va, vb, 3, recompute=rec, known={1.0: {'loss': -1.0, 'acc': 0.0}})
  np.testing.assert_allclose(pts[0]['loss'], score(rec(va))['loss'], rtol=1e-6)
  assert pts[-1]['loss'] == -1.0  # known points are not evaluated again


def test_plane_coordinates():
  rng = np.random.default_rng(0)
  p1, p2, p3 = ({'w': rng.normal(size=7)} for _ in range(3))
  b = basin.plane_basis(p1, p2, p3)
  d2, d3 = p2['w'] - p1['w'], p3['w'] - p1['w']
  q, r = np.linalg.qr(np.stack([d2, d3], 1))  # Gram-Schmidt of (w2 - w1, w3 - w1)
  np.testing.assert_allclose([b['u'], b['c'], b['v']], np.abs([r[0, 0], r[0, 1], r[1, 1]]),
                             rtol=1e-10)
  for (x, y), want in zip([(0, 0), (b['u'], 0), (b['c'], b['v'])], np.eye(3)):
    np.testing.assert_allclose(basin.plane_coefficients(b, x, y), want, atol=1e-12)
  xs, ys = basin.plane_grid(b, 4, margin=0.0)
  assert xs[0] == min(0, b['c']) and xs[-1] == max(b['u'], b['c']) and ys[-1] == b['v']
  with pytest.raises(ValueError, match='one line'):
    basin.plane_basis(p1, p2, {'w': 2 * p2['w'] - p1['w']})


def test_weight_distances_and_update_cosines():
  pre = _variables(8)['params']
  delta = {m: jax.tree_util.tree_map(np.zeros_like, pre[m]) for m in pre}
  delta['layer2'] = jax.tree_util.tree_map(lambda a: np.full_like(a, 0.5), pre['layer2'])
  member = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, pre, delta)
  rows = {r['stage']: r for r in weights.stage_distances(member(1.0), pre)}
  n2 = sum(np.size(a) for a in jax.tree_util.tree_leaves(pre['layer2']))
  assert set(rows) == {'stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc'}
  np.testing.assert_allclose(rows['layer2']['l2'], 0.5 * np.sqrt(n2), rtol=1e-6)
  np.testing.assert_allclose(rows['layer2']['log10_mse'], np.log10(0.25), rtol=1e-6)
  assert rows['layer1']['l2'] == 0 and rows['layer1']['log10_mse'] == float('-inf')
  cos, mods = weights.update_cosines([member(1.0), member(-2.0), member(3.0)], [pre] * 3)
  np.testing.assert_allclose(cos, [[1, -1, 1], [-1, 1, -1], [1, -1, 1]], atol=1e-12)
  assert 'fc' in mods
  # A head of another shape is not comparable.
  other = dict(pre, fc={'kernel': np.zeros((32, 10)), 'bias': np.zeros(10)})
  assert 'fc' not in [r['stage'] for r in weights.stage_distances(member(1.0), other)]


# Comparison and wandb ------------------------------------------------------------------------


def _summary(name, member_acc, div, ens_acc, workdir='w'):
  return {'name': name, 'metric': 'top1', 'members': [], 'mean_member_acc': member_acc,
          'diversity': div, 'ensembles': [{'size': 5, 'acc': ens_acc}], 'workdir': workdir}


def test_comparison_table(tmp_path):
  runs = [_summary('sse', 0.85, 70.0, 0.87), _summary('starsse', 0.86, 68.0, 0.875),
          _summary('sse', 0.86, 72.0, 0.88)]
  for k, s in enumerate(runs):
    os.makedirs(tmp_path / f'r{k}')
    (tmp_path / f'r{k}' / 'summary.json').write_text(json.dumps(s))
  out = analyze.analyze_runs([tmp_path / f'r{k}' for k in range(3)], tmp_path / 'cmp',
                             compare_only=True, progress=False)
  rows = {r['method']: r for r in _read_csv(tmp_path / 'cmp' / 'comparison.csv')}
  assert list(rows) == ['sse', 'starsse'] and rows['sse']['runs'] == '2'
  np.testing.assert_allclose(float(rows['sse']['ensemble_acc_mean']), 87.5)
  np.testing.assert_allclose(float(rows['sse']['ensemble_acc_std']),
                             np.std([87.0, 88.0], ddof=1))
  np.testing.assert_allclose(float(rows['sse']['diversity_std']), np.std([70.0, 72.0], ddof=1))
  assert out['comparison'][0]['member_acc'] == '85.50 +- 0.71'  # sample std (ddof 1)
  md = (tmp_path / 'cmp' / 'comparison.md').read_text()
  assert '| sse | 2 | 85.50 +- 0.71 | 71.00 +- 1.41 | 5 | 87.50 +- 0.71 |' in md
  with pytest.raises(ValueError, match='lacks'):
    compare.comparison([{'name': 'x'}])


def test_wandb_logging_is_lazy_and_optional(tmp_path, monkeypatch):
  calls = []

  class Run:
    def log(self, payload):
      calls.append(('log', sorted(payload)))

    def finish(self):
      calls.append(('finish',))

  fake = types.SimpleNamespace(
      init=lambda **kw: calls.append(('init', kw['mode'], kw['job_type'])) or Run(),
      Image=lambda path: ('image', path), Table=lambda columns, data: ('table', columns, data))
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  png = tmp_path / 'a.png'
  png.write_bytes(b'')
  tables.write_csv(tmp_path / 't.csv', [{'x': 1}])
  files = {'a.png': str(png), 't.csv': str(tmp_path / 't.csv')}
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'wandb_mode': 'offline', 'name': 'n'})
  assert analyze.log_wandb(config, str(tmp_path), files, progress=False) is not None
  assert calls == [('init', 'offline', 'analysis'), ('log', ['analysis/a', 'analysis/t']),
                   ('finish',)]
  config.wandb_mode = 'disabled'
  calls.clear()
  assert analyze.log_wandb(config, str(tmp_path), files) is None and not calls


def test_wandb_auto_mode_is_one_rule(tmp_path, monkeypatch):
  """'auto' is online when an API key is in the environment or in ~/.netrc, for training and
  the analysis alike (a key wandb's module holds elsewhere does not count)."""
  from enstransfer_jax.training import wandb_log  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  modes = []
  fake = types.SimpleNamespace(
      init=lambda **kw: modes.append(kw['mode']) or types.SimpleNamespace(
          log=lambda payload: None, finish=lambda: None),
      api=types.SimpleNamespace(api_key='elsewhere'))
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  netrc = tmp_path / 'netrc'
  monkeypatch.setenv('NETRC', str(netrc))
  config = ml_collections.ConfigDict({'wandb_mode': 'auto', 'name': 'n'})
  for logged_in, want in [(lambda: None, 'offline'),
                          (lambda: netrc.write_text('machine api.wandb.ai\n  password k\n'),
                           'online'),
                          (lambda: (netrc.unlink(), monkeypatch.setenv('WANDB_API_KEY', 'k')),
                           'online')]:
    logged_in()
    assert wandb_log.resolve_mode('auto') == want
    analyze.log_wandb(config, str(tmp_path), {}, progress=False)
    assert modes[-1] == want
  assert wandb_log.resolve_mode('offline') == 'offline'


# End to end ----------------------------------------------------------------------------------


def _config():
  c = quickstart.get_config()
  c.model, c.width, c.image_size, c.eval_batch_size, c.batch_size = 'ResNet18', 4, SIZE, 128, 64
  c.name, c.wandb_mode, c.num_fge = 'tiny_starsse', 'disabled', 3
  c.pretrain.enabled = False
  return c


def _perturb(params, scale, seed):
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 100))
  return jax.tree_util.tree_map(
      lambda p: np.asarray(p + scale * jax.random.normal(next(keys), p.shape)), params)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A finished 3-member run with a 10-class pre-trained model, written like run_experiment."""
  root = tmp_path_factory.mktemp('run')
  config = _config()
  data = datasets.load_dataset(config)
  pre = _variables(0, num_classes=10)
  checkpoints.save_converted(root / 'pre', pre, {'architecture': 'ResNet18'})
  model = _model(5)
  head = _variables(1)['params']['fc']
  members = []
  for i in range(3):
    params = _perturb({**pre['params'], 'fc': head}, 0.05, seed=10 + i)
    members.append({'params': params, 'batch_stats': pre['batch_stats']})
  ev = _evaluator(model, batch_size=128)
  (root / 'config.json').write_text(config.to_json_best_effort())
  (root / 'run_info.json').write_text(json.dumps({
      'name': config.name, 'model': 'ResNet18', 'width': 4, 'num_classes': 5, 'metric': 'top1',
      'dataset': 'digits', 'pretrained': str(root / 'pre')}))
  np.save(root / 'test_labels.npy', data.test_labels)
  probs = []
  for i, v in enumerate(members, start=1):
    checkpoints.save_converted(root / 'members' / str(i) / 'checkpoint', v, force=True)
    probs.append(ev.probs(v, data.test_images))
    np.save(root / 'members' / str(i) / 'test_probs.npy', probs[-1])
  summary = metrics.ensemble_summary(probs, data.test_labels)
  summary.update(name=config.name, workdir=str(root))
  (root / 'summary.json').write_text(json.dumps(summary))
  return {'root': root, 'data': data, 'members': members, 'pre': pre, 'probs': probs}


def test_end_to_end_report(workdir, tmp_path):
  root, data, probs = workdir['root'], workdir['data'], workdir['probs']
  out = tmp_path / 'analysis'
  res = analyze.analyze_runs([str(root)], str(out), subset=40, progress=False, rtd_points=12,
                             grid=3, line_points=3, bn_examples=128, eval_examples=100)
  files = res['runs'][0]['files']
  expected = ['members.csv', 'ensembles.csv', 'diversity.csv', 'similarity.csv', 'weights.csv',
              'update_cosine.csv', 'weight_pairs.csv', 'soup.csv', 'interpolation.csv',
              'plane.csv', 'analysis.json', 'report.md', 'ensemble_accuracy.png',
              'diversity.png', 'similarity_cka.png', 'similarity_mse.png', 'similarity_rtd.png',
              'weights.png', 'weight_cosine_vs_diversity.png', 'interpolation.png', 'plane.png',
              'lr_schedule.png']
  for name in expected:
    assert os.path.getsize(out / name) > 0, name
  labels = data.test_labels

  # Tables from the saved probabilities.
  members = _read_csv(out / 'members.csv')
  for m, p in zip(members, probs):
    np.testing.assert_allclose(float(m['acc']), np.mean(p.argmax(-1) == labels))
  ens = _read_csv(out / 'ensembles.csv')
  np.testing.assert_allclose(float(ens[-1]['acc']),
                             np.mean(np.mean(probs, 0).argmax(-1) == labels))
  assert [e['size'] for e in ens] == ['1', '2', '3']

  # Representations: CKA of member 1 and member 3 recomputed with the HSIC formula.
  sim = _read_csv(out / 'similarity.csv')
  assert len(sim) == 5 * (2 + 3)  # member1 -> members 2, 3; pre-trained -> members 1..3
  x = augment.eval_transform(data.test_images[:40], transform='cifar', image_size=SIZE)
  f1 = _model().apply(workdir['members'][0], x)[1][2].reshape(40, -1)
  f3 = _model().apply(workdir['members'][2], x)[1][2].reshape(40, -1)
  from test_similarity import hsic_cka  # pylint: disable=g-import-not-at-top
  row = next(r for r in sim if r['member'] == '3' and r['reference'] == 'member1'
             and r['layer'] == 'layer3')
  np.testing.assert_allclose(float(row['cka']), hsic_cka(np.asarray(f1, np.float64),
                                                         np.asarray(f3, np.float64)), rtol=1e-4)
  np.testing.assert_allclose(float(row['mse']), np.mean((np.asarray(f1) - np.asarray(f3)) ** 2),
                             rtol=1e-4)
  # RTD of the same pair: the RTD loss (tested against ripser.py in test_rtd.py) of the first
  # 12 examples of the maps computed here, every pair kept.
  from enstransfer_jax import losses  # pylint: disable=g-import-not-at-top
  want = losses.rtd_loss(np.asarray(f1[:12]), np.asarray(f3[:12]), dim=1, card=2 * 144,
                         lp=1.0, mode='minimum')
  np.testing.assert_allclose(float(row['rtd']), float(want), rtol=1e-3)
  assert float(row['rtd']) > 0

  # Weights: the pre-trained 10-class head is not comparable, the backbone is.
  w = _read_csv(out / 'weights.csv')
  assert sorted({r['stage'] for r in w}) == ['layer1', 'layer2', 'layer3', 'layer4', 'stem']
  pre, m2 = workdir['pre']['params'], workdir['members'][1]['params']
  flat_pre, flat_m2 = (traverse_util.flatten_dict(t['layer4']) for t in (pre, m2))
  diff = np.concatenate([np.ravel(np.asarray(flat_m2[k]) - flat_pre[k]) for k in flat_pre])
  row = next(r for r in w if r['member'] == '2' and r['stage'] == 'layer4')
  np.testing.assert_allclose(float(row['l2']), np.linalg.norm(diff), rtol=1e-5)
  report_md = (out / 'report.md').read_text()
  assert 'pre-trained head (10 classes) differs' in report_md
  for name in expected:
    if name.endswith('.png'):
      assert f'({name})' in report_md, name

  # Basin: lines share end points with the members evaluated with recomputed BN statistics.
  lines = _read_csv(out / 'interpolation.csv')
  by_line = {}
  for r in lines:
    by_line.setdefault(r['line'], []).append(r)
  assert set(by_line) == {'member 1 - member 2', 'member 1 - member 3', 'member 2 - member 3',
                          'pretrained - member 1', 'pretrained - member 2',
                          'pretrained - member 3'}
  assert [float(r['alpha']) for r in by_line['member 1 - member 2']] == [0.0, 0.5, 1.0]
  # Reference by the PyTorch twin: torch.optim.swa_utils.update_bn on the same 128 training
  # images (one batch), then the member's probabilities on the 100 scored test images.
  bn_idx = np.sort(np.random.default_rng(0).choice(len(data.train_labels), 128, replace=False))
  ev_idx = np.sort(np.random.default_rng(0).choice(len(labels), 100, replace=False))
  p2 = _torch_probs_with_recomputed_bn(workdir['members'][1], data.train_images[bn_idx],
                                       data.test_images[ev_idx])
  for name, idx in (('member 1 - member 2', -1), ('member 2 - member 3', 0),
                    ('pretrained - member 2', -1)):
    np.testing.assert_allclose(float(by_line[name][idx]['acc']),
                               np.mean(p2.argmax(-1) == labels[ev_idx]), atol=0.011,
                               err_msg=name)
    np.testing.assert_allclose(float(by_line[name][idx]['loss']),
                               -np.mean(np.log(p2[np.arange(100), labels[ev_idx]])), rtol=1e-4,
                               err_msg=name)
  plane = _read_csv(out / 'plane.csv')
  assert len(plane) == 9
  # The uniform soup by hand: every parameter averaged over the 3 members, BN statistics
  # recomputed by torch on the same 128 training images, scored on the whole test split.
  soup_rows = _read_csv(out / 'soup.csv')
  assert soup_rows[0]['model'] == 'uniform soup'
  mean = jax.tree_util.tree_map(lambda *xs: np.mean([np.asarray(x) for x in xs], 0),
                                *workdir['members'])
  ps = _torch_probs_with_recomputed_bn(mean, data.train_images[bn_idx], data.test_images)
  np.testing.assert_allclose(float(soup_rows[0]['acc']), np.mean(ps.argmax(-1) == labels),
                             atol=2.1 / len(labels))
  np.testing.assert_allclose(float(soup_rows[0]['nll']),
                             -np.mean(np.log(ps[np.arange(len(labels)), labels])), rtol=1e-4)
  assert json.loads((out / 'analysis.json').read_text())['subset'] == 40


def _torch_probs_with_recomputed_bn(variables, bn_images, test_images):
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  net = engine_util.torch_twin(variables, 5, train=True)
  to_torch = lambda im: torch.from_numpy(np.asarray(augment.eval_transform(
      im, transform='cifar', image_size=SIZE), np.float64).transpose(0, 3, 1, 2).copy())
  torch.optim.swa_utils.update_bn([to_torch(bn_images)], net)
  net.eval()
  with torch.no_grad():
    probs = torch.softmax(net(to_torch(test_images))[0], -1).numpy()
  torch.set_grad_enabled(True)
  return probs


def test_bad_inputs(tmp_path, workdir):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    analyze.analyze_runs([str(tmp_path / 'nope')], progress=False)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='config.json is missing'):
    pipeline.load_run(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match='subset must be >= 2'):
    analyze.analyze_runs([str(workdir['root'])], subset=1, progress=False)
  with pytest.raises(ValueError, match='unknown analysis option'):
    analyze.analyze_runs([str(workdir['root'])], gird=3, progress=False)
  with pytest.raises(SystemExit) as e:
    analyze.main([str(tmp_path / 'nope')])
  assert e.value.code == 2


def test_cli_two_members_from_scratch(workdir, tmp_path):
  """No pre-trained model, two members: pre-trained parts and the plane are skipped, said so."""
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'run'
  shutil.copytree(workdir['root'], root, ignore=shutil.ignore_patterns('pre', '3', 'analysis'))
  info = json.loads((root / 'run_info.json').read_text())
  (root / 'run_info.json').write_text(json.dumps({**info, 'pretrained': ''}))
  summary = json.loads((root / 'summary.json').read_text())  # a run of two members
  (root / 'summary.json').write_text(json.dumps({**summary, 'members': summary['members'][:2]}))
  analyze.main([str(root), '--subset', '20', '--rtd-points', '0', '--grid', '3',
                '--line-points', '2', '--bn-examples', '64', '--eval-examples', '50',
                '--no-soup', '--quiet'])
  out = root / 'analysis'
  sim = _read_csv(out / 'similarity.csv')
  assert [(r['member'], r['reference']) for r in sim] == [('2', 'member1')] * 5
  assert all(r['rtd'] == '' for r in sim)  # RTD disabled: NaN written as an empty cell
  lines = _read_csv(out / 'interpolation.csv')
  assert [(r['line'], float(r['alpha'])) for r in lines] == [('member 1 - member 2', 0.0),
                                                              ('member 1 - member 2', 1.0)]
  text = (out / 'report.md').read_text()
  assert 'Trained from scratch' in text and 'Fewer than 3 members' in text
  for name in ('weights.csv', 'soup.csv', 'plane.png'):
    assert not (out / name).exists()
