"""report.md of one run: its tables in Markdown next to its figures (the writers are
tables.py's; the comparison of several runs is compare.py's)."""

from enstransfer_jax.analysis import calibration, one_model, ood, study
from enstransfer_jax.analysis.tables import fmt, markdown_table, matrix_rows, pct


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
  md += study.report_lines(res, files)
  md += ['## Files', '', ', '.join(f'[{n}]({n})' for n in sorted(files) if n != 'report.md'), '']
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path
