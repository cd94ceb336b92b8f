"""Tables as CSV / JSON / Markdown, and the multi-run comparison in the thesis's format.

comparison(summaries): runs grouped by method name; per method the mean and standard
deviation over runs (numpy's population std, ddof=0; 0 for one run) of the mean member
accuracy, the diversity and the accuracy of the full ensemble, in %, written like the
thesis: '85.88 +- 0.25'; next to them the thesis's Table 4.1 values of the method and the
difference in units of the thesis's std, for runs in the thesis's setting (thesis.py).
"""

import csv
import json
import math
import os

import numpy as np

from enstransfer_jax.analysis import calibration, one_model, ood, thesis
from enstransfer_jax.errors import UserError


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, dict):
    return {str(k): _plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  return v


def write_json(path, obj):
  """JSON with numpy values as lists and non-finite floats as null."""
  with open(path, 'w') as f:
    json.dump(_plain(obj), f, indent=2, sort_keys=True, allow_nan=False)
    f.write('\n')
  return path


def write_csv(path, rows, columns=None):
  columns = columns or list(dict.fromkeys(k for r in rows for k in r))
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    w.writeheader()
    for r in rows:
      w.writerow({k: _plain(r.get(k)) for k in columns})
  return path


def matrix_rows(matrix, prefix='member'):
  """[K, K] matrix -> rows {'member': i, 'member1': ..., 'memberK': ...} for write_csv."""
  m = np.asarray(matrix)
  return [{prefix: i + 1, **{f'{prefix}{j + 1}': float(m[i, j]) for j in range(m.shape[1])}}
          for i in range(m.shape[0])]


def fmt(value, spec='.4f'):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if isinstance(value, float) and math.isinf(value):
    return '-inf' if value < 0 else 'inf'
  return format(value, spec) if isinstance(value, (float, np.floating)) else str(value)


def markdown_table(rows, columns, formats=None):
  """columns: [(key, header)]; formats: {key: format spec or callable}."""
  formats = formats or {}
  lines = ['| ' + ' | '.join(h for _, h in columns) + ' |',
           '|' + '---|' * len(columns)]
  for r in rows:
    cells = []
    for key, _ in columns:
      f = formats.get(key, '.4f')
      v = r.get(key)
      cells.append(f(v) if callable(f) else fmt(v, f))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def pct(v):
  return fmt(None if v is None else 100.0 * v, '.2f')


def mean_std(values):
  """'mean +- std' of values already in the unit shown."""
  values = np.asarray(values, float)
  return f'{values.mean():.2f} +- {values.std():.2f}'


def comparison(summaries):
  """Rows per method (first-seen order) from finished runs' summary dicts."""
  groups = {}
  for s in summaries:
    missing = [k for k in ('name', 'members', 'ensembles', 'mean_member_acc', 'diversity')
               if k not in s]
    if missing:
      raise UserError(f"summary of {s.get('workdir', '?')} lacks {missing[0]!r}; is it a "
                      'finished run (summary.json written by run_experiment)?')
    groups.setdefault(s['name'], []).append(s)
  rows = []
  for name, runs in groups.items():
    member = [100 * r['mean_member_acc'] for r in runs]
    div = [r['diversity'] for r in runs]
    ens = [100 * r['ensembles'][-1]['acc'] for r in runs]
    sizes = sorted({r['ensembles'][-1]['size'] for r in runs})
    row = {
        'method': name, 'runs': len(runs), 'ensemble_size': '/'.join(map(str, sizes)),
        'metric': '/'.join(sorted({r.get('metric', 'top1') for r in runs})),
        'member_acc_mean': float(np.mean(member)), 'member_acc_std': float(np.std(member)),
        'diversity_mean': float(np.mean(div)), 'diversity_std': float(np.std(div)),
        'ensemble_acc_mean': float(np.mean(ens)), 'ensemble_acc_std': float(np.std(ens)),
        'member_acc': mean_std(member), 'diversity': mean_std(div), 'ensemble_acc': mean_std(ens),
        'workdirs': ';'.join(str(r.get('workdir', '')) for r in runs),
        **thesis.thesis_columns(name, runs, member, ens)}
    rows.append({**row, **thesis.formatted(row)})
  return rows


COMPARISON_COLUMNS = [('method', 'method'), ('runs', 'runs'), ('member_acc', 'mean member acc (%)'),
                      ('diversity', 'diversity'), ('ensemble_size', 'ensemble size'),
                      ('ensemble_acc', 'ensemble acc (%)'),
                      ('thesis_ensemble_acc', 'thesis ensemble acc (%)'),
                      ('ensemble_acc_z', 'ensemble acc vs thesis (thesis std)'),
                      ('thesis_member_acc', 'thesis member acc (%)'),
                      ('member_acc_z', 'member acc vs thesis (thesis std)'),
                      ('thesis_diversity_cell', 'thesis diversity')]


def write_comparison(out_dir, summaries):
  """comparison.md and comparison.csv in out_dir; returns the rows."""
  rows = comparison(summaries)
  os.makedirs(out_dir, exist_ok=True)
  write_csv(os.path.join(out_dir, 'comparison.csv'), rows, [
      'method', 'runs', 'ensemble_size', 'metric', 'member_acc_mean', 'member_acc_std',
      'diversity_mean', 'diversity_std', 'ensemble_acc_mean', 'ensemble_acc_std',
      *thesis.COLUMNS, 'workdirs'])
  text = ['# Comparison of methods', '',
          'Mean +- std over runs (population std); accuracies in %, diversity = 100 x mean '
          'pairwise disagreement / max error. Thesis: its Table 4.1 (BYOL ResNet-50 on '
          'CIFAR-100, ensembles of 5, 2 checkpoints x 3 seeds) for runs in that setting; '
          '"vs thesis" = (mean here - thesis mean) / thesis std.', '',
          markdown_table(rows, COMPARISON_COLUMNS, {k: str for k, _ in COMPARISON_COLUMNS}), '']
  with open(os.path.join(out_dir, 'comparison.md'), 'w') as f:
    f.write('\n'.join(text))
  return rows


def _img(files, name, alt):
  return [f'![{alt}]({name})', ''] if name in files else []


def _pivot_weights(rows):
  stages = list(dict.fromkeys(r['stage'] for r in rows))
  out = []
  for m in sorted({r['member'] for r in rows}):
    vals = {r['stage']: r for r in rows if r['member'] == m}
    out.append({'member': m, **{s: (f"{vals[s]['l2']:.4g} ({fmt(vals[s]['log10_mse'], '.2f')})"
                                    if s in vals else 'n/a') for s in stages}})
  return out, [('member', 'member')] + [(s, s) for s in stages]


def write_run_report(path, res, files):
  """report.md of one run: the tables in Markdown and the PNG figures next to it."""
  last = res['ensembles'][-1]
  md = [f"# Analysis of {res['name'] or 'run'}", '', f"Work dir: `{res['workdir']}`  ",
        f"Metric: {res['metric']}; {len(res['members'])} members; ensemble of {last['size']}: "
        f"{pct(last['acc'])}% (mean member {pct(res['mean_member_acc'])}%, diversity "
        f"{res['diversity']:.2f}).", '']
  if res['notes']:
    md += ['**Notes**', ''] + [f'- {n}' for n in res['notes']] + ['']
  md += ['## Predictions', '', 'From the saved test probabilities (members/<i>/test_probs.npy).',
         '', markdown_table(res['members'], [('member', 'member'), ('acc', 'acc (%)'),
                                             ('nll', 'NLL'), ('ece', 'ECE'), ('brier', 'Brier')],
                            {'member': str, 'acc': pct}), '',
         markdown_table(res['ensembles'], [('size', 'ensemble size'), ('acc', 'acc (%)'),
                                           ('nll', 'NLL'), ('ece', 'ECE'), ('brier', 'Brier')],
                        {'size': str, 'acc': pct}), '']
  md += _img(files, 'ensemble_accuracy.png', 'ensemble accuracy against size')
  k = len(res['members'])
  md += ['Pairwise diversity (100 x disagreement / max error):', '',
         markdown_table(matrix_rows(res['diversity_matrix']),
                        [('member', '')] + [(f'member{j + 1}', str(j + 1)) for j in range(k)],
                        {'member': str, **{f'member{j + 1}': '.2f' for j in range(k)}}), '']
  md += _img(files, 'diversity.png', 'diversity heat map')
  md += ['## Representations', '',
         f"The first {res.get('subset', 0)} test examples; RTD (the thesis's) on the first "
         f"{min(res['options']['rtd_points'], res.get('subset', 0))} of them; RTD-Lite on all "
         "of them; RTD metric (the "
         f"RTD literature's) averaged over {res['options'].get('rtd_trials', 10)} random "
         f"subsets of {res['options'].get('rtd_batch', 500)} of them, all of them once when "
         'fewer (n/a where disabled); MSE needs maps of equal shape.', '']
  if res['similarity']:
    md += [markdown_table(res['similarity'], [
        ('member', 'member'), ('reference', 'to'), ('layer', 'map'), ('cka', 'linear CKA'),
        ('mse', 'MSE'), ('wasserstein', 'Wasserstein'), ('rtd', 'RTD'), ('rtd_lite', 'RTD-Lite'),
        ('rtd_metric', 'RTD metric')],
        {'member': str, 'reference': str, 'layer': str, 'mse': '.4g', 'wasserstein': '.4g',
         'rtd': '.4g',
         'rtd_lite': '.4g', 'rtd_metric': '.4g'}), '']
  else:
    md += ['No pair to compare (one member and no pre-trained model).', '']
  for m in ('cka', 'rtd', 'mse'):
    md += _img(files, f'similarity_{m}.png', f'{m} against accuracy')
  md += ['## Weights', '']
  if 'weights' in res:
    rows, cols = _pivot_weights(res['weights'])
    md += ['Per stage: ||w - w_pre||_2 (log10 MSE) from the pre-trained model.', '',
           markdown_table(rows, cols, {c: str for c, _ in cols}), '']
    md += _img(files, 'weights.png', 'weight distances')
    md += [f"Cosine similarity of the members' updates w_i - w_pre over "
           f"{', '.join(res['update_modules'])}, next to their diversity:", '',
           markdown_table(res['weight_pairs'], [
               ('member_i', 'i'), ('member_j', 'j'), ('update_cosine', 'update cosine'),
               ('diversity', 'diversity')], {'member_i': str, 'member_j': str,
                                             'diversity': '.2f'}), '']
    md += _img(files, 'weight_cosine_vs_diversity.png', 'weight similarity against diversity')
  else:
    md += ['Skipped: no pre-trained model for every member (see the notes).', '']
  if 'soup' in res:
    s = res['soup']
    md += ['## Uniform model soup', '',
           (f"Members' parameters averaged; BN statistics recomputed on {s['bn_examples']} "
            'training images (eval transform).' if res.get('batchnorm', True) else
            "Members' parameters averaged (LayerNorm only: no statistics to recompute)."), '',
           markdown_table([{'model': 'uniform soup', **s},
                           {'model': f"ensemble of {last['size']}", **last},
                           {'model': 'mean member', 'acc': res['mean_member_acc']}],
                          [('model', 'model'), ('acc', 'acc (%)'), ('nll', 'NLL'),
                           ('ece', 'ECE'), ('brier', 'Brier')], {'model': str, 'acc': pct}), '']
  md += (one_model.report_lines(res['one_model'], {**files, **res.get('uncertainty_files', {})})
         if 'one_model' in res else [])
  if 'basin' in res:
    b = res['basin']
    md += ['## Basin', '',
           f"Test loss and accuracy on {b['eval_examples']} test images; "
           + (f"BN statistics recomputed at every point on {b['bn_examples']} training "
              'images, so the end points are the models with recomputed BN statistics.'
              if res.get('batchnorm', True) else
              'LayerNorm only: the points are the interpolated parameters as they are.'), '']
    ends = b['members_recomputed_bn']
    at = 'BN recomputed' if res.get('batchnorm', True) else 'end point'
    md += [markdown_table([{'member': m['member'], 'saved': m['acc'],
                            'recomputed': ends[m['member']]['acc'],
                            'loss': ends[m['member']]['loss']} for m in res['members']],
                          [('member', 'member'), ('saved', 'acc (%), saved probabilities'),
                           ('recomputed', f'acc (%), {at}'),
                           ('loss', f'loss, {at}')],
                          {'member': str, 'saved': pct, 'recomputed': pct}), '']
    if b['lines']:
      alphas = [pt['alpha'] for pt in next(iter(b['lines'].values()))]
      rows = [{'line': name, **{f'a{j}': pt['acc'] for j, pt in enumerate(pts)}}
              for name, pts in b['lines'].items()]
      md += ['Accuracy (%) along the lines, alpha = ' + ', '.join(f'{a:g}' for a in alphas)
             + ':', '', markdown_table(rows, [('line', 'line')] + [
                 (f'a{j}', f'{a:g}') for j, a in enumerate(alphas)],
                 {'line': str, **{f'a{j}': pct for j in range(len(alphas))}}), '']
    md += _img(files, 'interpolation.png', 'interpolation curves')
    md += _img(files, 'plane.png', 'plane through members 1..3')
  md += _img(files, 'lr_schedule.png', 'learning-rate schedule')
  files = {**files, **res.get('uncertainty_files', {})}
  md += calibration.report_lines(res['calibration'], files) if 'calibration' in res else []
  md += ood.report_lines(res['ood'], files) if 'ood' in res else []
  from enstransfer_jax.analysis import study  # pylint: disable=g-import-not-at-top
  md += study.report_lines(res, files)
  md += ['## Files', '', ', '.join(f'[{n}]({n})' for n in sorted(files) if n != 'report.md'), '']
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path
