"""Everything one analysis writes: CSV / JSON tables, PNG figures and report.md.

write_outputs(results, out) -> {file name: path}; `results` is pipeline.analyze_run's dict.
"""

import os

import numpy as np

from enstransfer_jax.analysis import plots, report, tables


def write_outputs(res, out):
  """CSV / JSON tables, PNG plots and report.md; returns {name: path}."""
  p = lambda name: os.path.join(out, name)
  files = {
      'members.csv': tables.write_csv(p('members.csv'), res['members']),
      'ensembles.csv': tables.write_csv(p('ensembles.csv'), res['ensembles']),
      'diversity.csv': tables.write_csv(p('diversity.csv'), tables.matrix_rows(
          res['diversity_matrix'])),
      'similarity.csv': tables.write_csv(p('similarity.csv'), res['similarity']),
  }
  acc = [m['acc'] for m in res['members']]
  files['ensemble_accuracy.png'] = plots.ensemble_accuracy(
      p('ensemble_accuracy.png'), [e['size'] for e in res['ensembles']],
      [e['acc'] for e in res['ensembles']], acc, (res.get('soup') or {}).get('acc'))
  files['diversity.png'] = plots.heatmap(p('diversity.png'), res['diversity_matrix'],
                                         'Pairwise diversity')
  for m in ('cka', 'mse', 'rtd'):
    if res['similarity'] and any(np.isfinite(r[m]) for r in res['similarity']):
      files[f'similarity_{m}.png'] = plots.similarity_vs_accuracy(
          p(f'similarity_{m}.png'), res['similarity'], acc, m)
  if 'weights' in res:
    files['weights.csv'] = tables.write_csv(p('weights.csv'), res['weights'])
    files['update_cosine.csv'] = tables.write_csv(p('update_cosine.csv'),
                                                  tables.matrix_rows(res['update_cosine']))
    files['weight_pairs.csv'] = tables.write_csv(p('weight_pairs.csv'), res['weight_pairs'])
    files['weights.png'] = plots.weight_distances(p('weights.png'), res['weights'])
    if res['weight_pairs']:
      wp = res['weight_pairs']
      files['weight_cosine_vs_diversity.png'] = plots.scatter(
          p('weight_cosine_vs_diversity.png'), [r['update_cosine'] for r in wp],
          [r['diversity'] for r in wp], 'cosine of updates (w_i - w_pre)', 'pairwise diversity',
          'Weight similarity against diversity',
          [f"{r['member_i']}-{r['member_j']}" for r in wp])
  if 'soup' in res:
    files['soup.csv'] = tables.write_csv(p('soup.csv'), [
        {'model': 'uniform soup', **res['soup']},
        {'model': f"ensemble of {res['ensembles'][-1]['size']}", **res['ensembles'][-1]},
        {'model': 'mean member', 'acc': res['mean_member_acc']}],
        ['model', 'acc', 'nll', 'ece', 'brier'])
  if 'basin' in res:
    b = res['basin']
    files['interpolation.csv'] = tables.write_csv(p('interpolation.csv'), [
        {'line': k, **pt} for k, pts in b['lines'].items() for pt in pts])
    if b['lines']:
      files['interpolation.png'] = plots.interpolation(p('interpolation.png'), b['lines'])
    if b['plane'] is not None:
      pl = b['plane']
      files['plane.csv'] = tables.write_csv(p('plane.csv'), [
          {'x': float(x), 'y': float(y), 'loss': float(pl['loss'][i, j]),
           'acc': float(pl['acc'][i, j])}
          for i, y in enumerate(pl['y']) for j, x in enumerate(pl['x'])])
      files['plane.png'] = plots.plane(p('plane.png'), pl)
  if 'lr' in res:
    files['lr_schedule.png'] = plots.learning_rate(p('lr_schedule.png'), res['lr'],
                                                   res['steps_per_epoch'])
  body = {k: v for k, v in res.items() if k not in ('lr', 'files')}
  files['analysis.json'] = tables.write_json(p('analysis.json'), body)
  files['report.md'] = report.write_run_report(p('report.md'), res, files)
  return files
