"""The comparison of methods over runs, as `analyze` and `reproduce` both print it.

Per run (`run_values`): the mean member accuracy, the accuracy of the full ensemble and of its
first k = 1..K members (in %), the ensemble's NLL and the diversity (100 x mean pairwise
disagreement / max error; nan for one member). Per method (`method_rows`): the mean and the
sample standard deviation (ddof 1; nan for one run) over its runs of each of them, and, against
a reference method, the paired difference over the seeds both ran, d_s = x_s(method) -
x_s(reference), as mean(d) and its two-sided t-interval mean(d) +- t_{(1 + level) / 2, n - 1}
sd(d) / sqrt(n) (scipy.stats.t; nan for n < 2). `pm` writes a mean and std as the thesis does:
'85.88 +- 0.25'.
"""

import math
import os

import numpy as np
from scipy import stats

from enstransfer_jax.analysis import tables, thesis
from enstransfer_jax.errors import UserError

COLUMNS = ('member_acc', 'ensemble_acc', 'ensemble_nll', 'diversity')  # the thesis's columns
PAIRED = ('ensemble_acc', 'ensemble_nll', 'diversity')


def mean_std(values):
  """(mean, sample std with ddof 1; nan for one value) of a list of numbers."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float('nan')


def mean_interval(values, level=0.95):
  """(mean, lo, hi): the mean of `values` and its two-sided t-interval (nan for n < 2)."""
  v = np.asarray(values, np.float64)
  n = len(v)
  mean = float(v.mean())
  if n < 2:
    return mean, float('nan'), float('nan')
  half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half


def paired_interval(x, y, level=0.95):
  """Mean of d = x - y over paired seeds and its two-sided t-interval (nan for n < 2)."""
  return mean_interval(np.asarray(x, np.float64) - np.asarray(y, np.float64), level)


def run_values(summary):
  """The per-run numbers of a finished run's summary (accuracies in %)."""
  ens = summary['ensembles']
  return {
      'member_acc': 100 * summary['mean_member_acc'],
      'ensemble_acc': 100 * ens[-1]['acc'],
      'ensemble_nll': ens[-1].get('nll', float('nan')),
      'diversity': summary['diversity'] if ens[-1].get('size', len(ens)) > 1 else float('nan'),
      'acc_by_size': [100 * e['acc'] for e in ens],
  }


def method_rows(runs, keys=COLUMNS, reference=None):
  """runs: {method: {seed: run values}} (run_values, plus any of `keys`), in row order. One row
  per method with runs: 'method', 'seeds', 'members', '<key>_mean' / '<key>_std' for each of
  `keys` and 'acc_k<k>_mean' / '_std' for the first k members; with a `reference` method,
  'paired_seeds' and '<key>_diff' / '_diff_lo' / '_diff_hi' for each of PAIRED on the seeds
  both have."""
  ref = runs.get(reference, {})
  rows = []
  for m, by_seed in runs.items():
    if not by_seed:
      continue
    seeds = list(by_seed)
    row = {'method': m, 'seeds': len(seeds), 'members': len(by_seed[seeds[0]]['acc_by_size'])}
    for key in keys:
      row[f'{key}_mean'], row[f'{key}_std'] = mean_std([by_seed[s][key] for s in seeds])
    sizes = min(len(by_seed[s]['acc_by_size']) for s in seeds)
    for k in range(sizes):
      row[f'acc_k{k + 1}_mean'], row[f'acc_k{k + 1}_std'] = mean_std(
          [by_seed[s]['acc_by_size'][k] for s in seeds])
    if reference is not None:
      common = [s for s in seeds if s in ref]
      row['paired_seeds'] = len(common) if m != reference else 0
      for key in PAIRED:
        if m != reference and common:
          d = paired_interval([by_seed[s][key] for s in common], [ref[s][key] for s in common])
        else:
          d = (float('nan'),) * 3
        row[f'{key}_diff'], row[f'{key}_diff_lo'], row[f'{key}_diff_hi'] = d
    rows.append(row)
  return rows


def pm(mean, std, spec='.2f'):
  """'mean +- std'; the mean alone where the std is nan (one run); '-' without a mean."""
  if mean is None or not math.isfinite(mean):
    return '-'
  return f'{mean:{spec}}' + (f' +- {std:{spec}}' if math.isfinite(std) else '')


def diff(d, lo, hi, spec='.2f'):
  """'+d [lo, hi]' with ' *' where the interval excludes 0; '+d' without an interval."""
  if not math.isfinite(d):
    return '-'
  if not math.isfinite(lo):
    return f'{d:+{spec}}'
  mark = ' *' if lo > 0 or hi < 0 else ''
  return f'{d:+{spec}} [{lo:+{spec}}, {hi:+{spec}}]{mark}'


# --- analyze's comparison: runs grouped by method name, with the thesis's Table 4.1 ----------

ANALYSIS_COLUMNS = [('method', 'method'), ('runs', 'runs'),
                    ('member_acc', 'mean member acc (%)'), ('diversity', 'diversity'),
                    ('ensemble_size', 'ensemble size'), ('ensemble_acc', 'ensemble acc (%)'),
                    ('thesis_ensemble_acc', 'thesis ensemble acc (%)'),
                    ('ensemble_acc_z', 'ensemble acc vs thesis (thesis std)'),
                    ('thesis_member_acc', 'thesis member acc (%)'),
                    ('member_acc_z', 'member acc vs thesis (thesis std)'),
                    ('thesis_diversity_cell', 'thesis diversity')]


def comparison(summaries):
  """Rows per method (summary 'name', first-seen order) from finished runs' summary dicts:
  mean +- sample std over the runs of the mean member accuracy, the diversity and the full
  ensemble's accuracy, and the thesis's Table 4.1 values for runs in its setting (thesis.py)."""
  groups = {}
  for s in summaries:
    missing = [k for k in ('name', 'members', 'ensembles', 'mean_member_acc', 'diversity')
               if k not in s]
    if missing:
      raise UserError(f"summary of {s.get('workdir', '?')} lacks {missing[0]!r}; is it a "
                      'finished run (summary.json written by run_experiment)?')
    groups.setdefault(s['name'], []).append(s)
  values = {name: dict(enumerate(run_values(r) for r in runs)) for name, runs in groups.items()}
  keys = ('member_acc', 'diversity', 'ensemble_acc')
  rows = []
  for stats, (name, runs) in zip(method_rows(values, keys), groups.items()):
    sizes = sorted({r['ensembles'][-1]['size'] for r in runs})
    row = {'method': name, 'runs': len(runs), 'ensemble_size': '/'.join(map(str, sizes)),
           'metric': '/'.join(sorted({r.get('metric', 'top1') for r in runs})),
           **{f'{k}_{s}': stats[f'{k}_{s}'] for k in keys for s in ('mean', 'std')},
           **{k: pm(stats[f'{k}_mean'], stats[f'{k}_std']) for k in keys},
           'workdirs': ';'.join(str(r.get('workdir', '')) for r in runs),
           **thesis.thesis_columns(name, runs, [v['member_acc'] for v in values[name].values()],
                                   [v['ensemble_acc'] for v in values[name].values()])}
    rows.append({**row, **thesis.formatted(row)})
  return rows


def write_comparison(out_dir, summaries):
  """comparison.md and comparison.csv in out_dir; returns the rows."""
  rows = comparison(summaries)
  os.makedirs(out_dir, exist_ok=True)
  tables.write_csv(os.path.join(out_dir, 'comparison.csv'), rows, [
      'method', 'runs', 'ensemble_size', 'metric', 'member_acc_mean', 'member_acc_std',
      'diversity_mean', 'diversity_std', 'ensemble_acc_mean', 'ensemble_acc_std',
      *thesis.COLUMNS, 'workdirs'])
  tables.write_text(os.path.join(out_dir, 'comparison.md'), '\n'.join([
      '# Comparison of methods', '',
      'Mean +- std over runs (sample std, ddof 1; the mean alone for one run); accuracies in %, '
      'diversity = 100 x mean pairwise disagreement / max error (none for one member). '
      "Thesis: its Table 4.1 (BYOL ResNet-50 on CIFAR-100, ensembles of 5, 2 checkpoints x 3 "
      'seeds) for runs in that setting; "vs thesis" = (mean here - thesis mean) / thesis std.',
      '', markdown(rows), '']))
  return rows


def markdown(rows):
  """analyze's comparison rows as a Markdown table."""
  return tables.markdown_table(rows, ANALYSIS_COLUMNS, {k: str for k, _ in ANALYSIS_COLUMNS})
