"""analysis/compare.py on a small hand-made set of runs against numpy and scipy, and the same
std in `analyze --compare-only` and in reproduce's table for the same runs."""

import json
import os

import numpy as np
import pytest
from scipy import stats

from enstransfer_jax import analyze, reproduce
from enstransfer_jax.analysis import compare

# method -> seed -> (mean member acc, ensemble acc by size, NLL, diversity); sse lacks seed 2.
RUNS = {'starsse': {0: (0.850, (0.86, 0.871), 0.52, 60.0), 1: (0.861, (0.87, 0.880), 0.50, 63.0),
                    2: (0.842, (0.85, 0.866), 0.55, 58.5)},
        'sse': {0: (0.845, (0.86, 0.874), 0.51, 66.0), 1: (0.855, (0.86, 0.873), 0.49, 69.5)},
        'single': {0: (0.84, (0.84,), 0.60, 0.0)}}


def _summary(method, seed):
  member, accs, nll, div = RUNS[method][seed]
  return {'name': method, 'metric': 'top1', 'members': [], 'mean_member_acc': member,
          'diversity': div, 'ensembles': [{'size': k + 1, 'acc': a, 'nll': nll}
                                          for k, a in enumerate(accs)]}


def test_method_rows_against_numpy_and_scipy():
  runs = {m: {s: compare.run_values(_summary(m, s)) for s in seeds} for m, seeds in RUNS.items()}
  rows = {r['method']: r for r in compare.method_rows(runs, reference='starsse')}
  for m, seeds in RUNS.items():
    row = rows[m]
    assert row['seeds'] == len(seeds) and row['members'] == len(seeds[0][1])
    for key, get in (('member_acc', lambda v: 100 * v[0]), ('ensemble_acc', lambda v: 100 * v[1][-1]),
                     ('acc_k1', lambda v: 100 * v[1][0]), ('ensemble_nll', lambda v: v[2])):
      values = [get(v) for v in seeds.values()]
      np.testing.assert_allclose(row[f'{key}_mean'], np.mean(values), rtol=1e-12)
      if len(values) > 1:
        np.testing.assert_allclose(row[f'{key}_std'], np.std(values, ddof=1), rtol=1e-12)
      else:
        assert np.isnan(row[f'{key}_std'])
  # Diversity: none for one member; the paired differences on the seeds both ran (0 and 1).
  assert np.isnan(rows['single']['diversity_mean'])
  assert rows['sse']['paired_seeds'] == 2 and rows['starsse']['paired_seeds'] == 0
  for key, get in (('ensemble_acc', lambda v: 100 * v[1][-1]), ('diversity', lambda v: v[3])):
    x = [get(RUNS['sse'][s]) for s in (0, 1)]
    y = [get(RUNS['starsse'][s]) for s in (0, 1)]
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    d = np.subtract(x, y)
    half = stats.t.ppf(0.975, 1) * np.std(d, ddof=1) / np.sqrt(2)
    np.testing.assert_allclose([rows['sse'][f'{key}_diff'], rows['sse'][f'{key}_diff_lo'],
                                rows['sse'][f'{key}_diff_hi']],
                               [d.mean(), ci.low, ci.high], rtol=1e-10)
    np.testing.assert_allclose(ci.high - d.mean(), half, rtol=1e-10)
    assert np.isnan(rows['starsse'][f'{key}_diff'])
  # The one seed of 'single' pairs with starsse's seed 0: a difference, no interval.
  assert rows['single']['paired_seeds'] == 1 and np.isnan(rows['single']['ensemble_acc_diff_lo'])
  assert compare.pm(85.884, 0.2549) == '85.88 +- 0.25' and compare.pm(84.0, float('nan')) == '84.00'
  assert compare.diff(1.0, 0.2, 1.8) == '+1.00 [+0.20, +1.80] *'


def test_paired_interval_against_scipy_five_seeds():
  rng = np.random.default_rng(0)
  x, y = rng.normal(90, 1, 5), rng.normal(89, 1, 5)
  mean, lo, hi = compare.paired_interval(x, y)
  ci = stats.ttest_rel(x, y).confidence_interval(0.95)
  np.testing.assert_allclose([mean, lo, hi], [np.mean(x - y), ci.low, ci.high], rtol=1e-12)
  want = stats.t.interval(0.9, 4, loc=np.mean(x), scale=stats.sem(x))
  np.testing.assert_allclose(compare.mean_interval(x, 0.9), [np.mean(x), *want], rtol=1e-12)


def test_analyze_and_reproduce_print_the_same_std(tmp_path):
  results, dirs = {}, []
  for m, seeds in RUNS.items():
    for s in seeds:
      d = tmp_path / f'{m}_seed={s}'
      d.mkdir()
      (d / 'summary.json').write_text(json.dumps(_summary(m, s)))
      results[(m, s)] = dict(_summary(m, s), workdir=str(d))
      dirs.append(str(d))
  cmp_rows = analyze.analyze_runs(dirs, tmp_path / 'cmp', compare_only=True,
                                  progress=False)['comparison']
  analyzed = {r['method']: r for r in cmp_rows}
  table = {r['method']: r for r in reproduce.table_rows(results, list(RUNS))}
  md = (tmp_path / 'cmp' / 'comparison.md').read_text()
  text = reproduce.markdown(list(table.values()))
  for m, seeds in RUNS.items():
    for key, get in (('member_acc', lambda v: 100 * v[0]),
                     ('ensemble_acc', lambda v: 100 * v[1][-1])):
      want = np.std([get(v) for v in seeds.values()], ddof=1) if len(seeds) > 1 else np.nan
      np.testing.assert_allclose(analyzed[m][f'{key}_std'], want, rtol=1e-12)
      np.testing.assert_allclose(table[m][f'{key}_std'], want, rtol=1e-12)
      cell = compare.pm(table[m][f'{key}_mean'], table[m][f'{key}_std'])
      assert analyzed[m][key] == cell and f'| {cell} |' in md and f'| {cell} |' in text
  np.testing.assert_allclose(analyzed['sse']['diversity_std'], table['sse']['diversity_std'])
  np.testing.assert_allclose(table['sse']['diversity_std'], np.std([66.0, 69.5], ddof=1))
  # Both files as written: the CSV holds the same numbers.
  reproduce.write_table(str(tmp_path / 'rep'), list(table.values()))
  import csv  # pylint: disable=g-import-not-at-top
  with open(tmp_path / 'rep' / 'table.csv') as f:
    rep = {r['method']: r for r in csv.DictReader(f)}
  with open(tmp_path / 'cmp' / 'comparison.csv') as f:
    ana = {r['method']: r for r in csv.DictReader(f)}
  for m in ('starsse', 'sse'):
    assert float(rep[m]['ensemble_acc_std']) == pytest.approx(float(ana[m]['ensemble_acc_std']),
                                                              rel=1e-12)
  assert rep['single']['ensemble_acc_std'] == ana['single']['ensemble_acc_std'] == ''
