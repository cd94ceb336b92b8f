"""The comparison table's thesis columns (Table 4.1) on fake finished work dirs, by hand."""

import csv
import json
import os

import pytest

from enstransfer_jax import analyze
from enstransfer_jax.analysis import thesis

BYOL = './checkpoints/byol-1000ep-1.pt'


def _run(root, name, member_acc, ens_acc, *, size=5, dataset='cifar100', num_classes=100,
         model='ImageNetResNet50', pretrained=BYOL, image_size=224):
  """A work dir holding only what the comparison reads: summary, config and run_info."""
  d = root / f'{name}_{len(os.listdir(root))}'
  os.makedirs(d)
  (d / 'summary.json').write_text(json.dumps({
      'name': name, 'metric': 'top1', 'members': [], 'mean_member_acc': member_acc,
      'diversity': 70.0, 'ensembles': [{'size': k, 'acc': ens_acc} for k in range(1, size + 1)],
      'workdir': '/elsewhere/at/training/time'}))
  (d / 'config.json').write_text(json.dumps({
      'name': name, 'model': model, 'width': 64, 'dataset': dataset, 'image_size': image_size,
      'use_test': True, 'ckpt': pretrained if isinstance(pretrained, str) else ''}))
  (d / 'run_info.json').write_text(json.dumps({
      'name': name, 'model': model, 'width': 64, 'num_classes': num_classes, 'metric': 'top1',
      'dataset': dataset, 'pretrained': pretrained}))
  return str(d)


def _csv(path):
  with open(path) as f:
    return {r['method']: r for r in csv.DictReader(f)}


def test_thesis_columns_by_hand(tmp_path):
  runs = tmp_path / 'runs'
  os.makedirs(runs)
  # Global DE from converted dirs whose names do not say BYOL but whose metadata does.
  ckpts = []
  for i in range(1, 6):
    c = runs / f'ck{i}'
    os.makedirs(c)
    (c / 'metadata.json').write_text(json.dumps({'source': f'byol-1000ep-{i}.pt'}))
    ckpts.append(str(c))
  dirs = [_run(runs, 'starsse', 0.8600, 0.8750), _run(runs, 'starsse', 0.8620, 0.8760),
          _run(runs, 'global_de', 0.8602, 0.8821, pretrained=ckpts),
          _run(runs, 'sse', 0.85, 0.87, dataset='cifar10', num_classes=10),
          _run(runs, 'quickstart_starsse', 0.9, 0.95),
          _run(runs, 'local_de', 0.86, 0.87, pretrained=''),
          _run(runs, 'starsse_ce', 0.85, 0.87, size=3),
          _run(runs, 'sse_mse', 0.86, 0.87, model='ResNet18'),
          _run(runs, 'starsse_wo', 0.86, 0.87, pretrained='./checkpoints/simclr.pt'),
          _run(runs, 'sse_rtd', 0.8571 + 0.0007, 0.8736 - 0.0018)]
  out = analyze.analyze_runs(dirs, tmp_path / 'cmp', compare_only=True, progress=False)
  rows = _csv(tmp_path / 'cmp' / 'comparison.csv')

  # StarSSE: means 86.10 and 87.55 against 85.88 +- 0.25 and 87.41 +- 0.12.
  r = rows['starsse']
  assert float(r['thesis_member_acc_mean']) == 85.88 and float(r['thesis_member_acc_std']) == 0.25
  assert float(r['member_acc_vs_thesis']) == pytest.approx((86.10 - 85.88) / 0.25)  # 0.88
  assert float(r['thesis_ensemble_acc_mean']) == 87.41
  assert float(r['ensemble_acc_vs_thesis']) == pytest.approx((87.55 - 87.41) / 0.12)  # 1.1667
  assert float(r['thesis_diversity']) == 68.12 and float(r['thesis_diversity_std']) == 1.15
  assert int(r['thesis_runs']) == 6 and int(rows['global_de']['thesis_runs']) == 5
  # Global DE: 86.02 (+0 std), 88.21 against 88.10 +- 0.11 (+1 std).
  g = rows['global_de']
  assert float(g['member_acc_vs_thesis']) == pytest.approx(0.0, abs=1e-9)
  assert float(g['ensemble_acc_vs_thesis']) == pytest.approx(1.0)
  # SSE-RTD: +0.07 / 0.07 = +1 and -0.18 / 0.09 = -2.
  assert float(rows['sse_rtd']['member_acc_vs_thesis']) == pytest.approx(1.0)
  assert float(rows['sse_rtd']['ensemble_acc_vs_thesis']) == pytest.approx(-2.0)
  # Not comparable: empty numbers and the reason.
  notes = {'sse': 'not CIFAR-100', 'quickstart_starsse': 'not in Table 4.1',
           'local_de': 'trained from scratch', 'starsse_ce': 'ensemble of 3',
           'sse_mse': 'not ResNet-50', 'starsse_wo': 'not a BYOL one'}
  for name, note in notes.items():
    assert rows[name]['thesis_ensemble_acc_mean'] == ''
    assert rows[name]['ensemble_acc_vs_thesis'] == ''
    assert note in rows[name]['thesis_note'], name

  md = (tmp_path / 'cmp' / 'comparison.md').read_text()
  # Ensemble accuracy: sample std (ddof 1) of 87.50 and 87.60 is 0.07; one Global DE run has
  # none, so its mean stands alone.
  assert ('| 87.55 +- 0.07 | 87.41 +- 0.12 | +1.17 | 85.88 +- 0.25 | +0.88 | 68.12 +- 1.15 |'
          in md)
  assert ('| 88.21 | 88.10 +- 0.11 | +1.00 | 86.02 +- 0.09 | +0.00 | 80.21 +- 1.60 |'
          in md)
  assert 'n/a: not in Table 4.1' in md
  assert [r['method'] for r in out['comparison']][:3] == ['starsse', 'global_de', 'sse']


def test_table_is_the_thesis_table():
  """Table 4.1 as diploma.pdf prints it: every column mean +- std; Local
  and Global DE the paper's means over 5 runs, every other row over 6."""
  table = {k: v[1:] for k, v in thesis.TABLE_4_1.items()}
  assert table == {
      'local_de': ((86.02, 0.09), (66.25, 3.56), (87.33, 0.21), 5),
      'global_de': ((86.02, 0.09), (80.21, 1.6), (88.10, 0.11), 5),
      'sse': ((85.52, 0.34), (71.57, 5.94), (87.11, 0.06), 6),
      'starsse': ((85.88, 0.25), (68.12, 1.15), (87.41, 0.12), 6),
      'sse_rtd': ((85.71, 0.07), (68.04, 5.78), (87.36, 0.09), 6),
      'sse_mse': ((86.46, 0.221), (56.62, 5.95), (87.37, 0.02), 6),
      'freeze_starsse': ((85.57, 0.356), (71.37, 2.02), (87.26, 0.06), 6),
      'freeze_starsse_layer4': ((85.94, 0.225), (60.94, 1.25), (87.1, 0.14), 6),
      'freeze_starsse_through_layer4': ((86.01, 0.195), (17.38, 1.02), (86.09, 0.22), 6),
      'starsse_wo': ((85.83, 0.24), (67.31, 1.77), (87.4, 0.16), 6),
      'starsse_ce': ((85.4, 0.49), (75.21, 3.79), (87.44, 0.2), 6)}
  # The WO row is Table 6.3's alpha = -31.6 column, and its label says so.
  assert '-31.6' in thesis.TABLE_4_1['starsse_wo'][0]


def test_every_thesis_row_has_a_config():
  """Each Table 4.1 key is a config's name, so the comparison recognises its runs."""
  import importlib  # pylint: disable=g-import-not-at-top
  for name in thesis.TABLE_4_1:
    assert importlib.import_module(f'configs.{name}').get_config().name == name
