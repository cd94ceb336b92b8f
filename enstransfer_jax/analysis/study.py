"""The thesis's own analyses (its Sections 4 and 6) of one run, and pooled over runs.

run_study(res, ...) adds to an analysis's results:
  'distances_to_first'  Figures 4.2 / 4.3: for members i = 2..M their accuracy and their RTD,
      MSE and Wasserstein distance (wasserstein.py) to member 1 on each feature map (the
      similarity rows against member 1), and 'weight_distances_to_first': log10 MSE and L2
      of the weights of each stage between member i and member 1 (weights.stage_distances);
      the thesis's "AvgPool layer weights" are the head after it (fc);
  'raw_weight_cosine'   Figures 6.2 / 6.4: the cosine of the members' raw weight vectors
      (weights.weight_cosines) of every pair next to its diversity, with their Pearson
      correlation (the thesis: -0.625 over its runs);
  'subensembles'        Figure 6.1 / Table 6.1: every K-member sub-ensemble (subensembles.py;
      with member 1 for snapshot methods, every subset for deep ensembles), its worst and
      best 5 %, the linear SVM between its best and worst halves;
and Table 6.2 is the run's pairwise diversity matrix (diversity.csv).
write_pooled(out, results) pools several runs: Table 6.1 and Figure 6.1 per method (runs of
one method's name pooled, as the thesis pools its two StarSSE runs), Figure 6.2 over every
pair of every run with the global correlation and the mean correlation within a run.
"""

import itertools
import os

import numpy as np

from enstransfer_jax.analysis import study_plots, subensembles, tables, weights
from enstransfer_jax.errors import UserError

TABLE_COLUMNS = ['group', 'ensembles', 'of', 'mean_member_acc_mean', 'mean_member_acc_std',
                 'diversity_mean', 'diversity_std', 'ensemble_acc_mean', 'ensemble_acc_std']


def correlation(pairs):
  """Pearson correlation of cosine and diversity over the pairs (nan when undefined)."""
  c = np.array([p['cosine'] for p in pairs], float)
  d = np.array([p['diversity'] for p in pairs], float)
  if len(c) < 2 or np.ptp(c) == 0 or np.ptp(d) == 0:
    return float('nan')
  return float(np.corrcoef(c, d)[0, 1])


def cosine_pairs(member_params, diversity_matrix):
  """[{'member_i', 'member_j', 'cosine', 'diversity', 'with_first'}] over all pairs."""
  cos, _ = weights.weight_cosines(member_params)
  return [{'member_i': i + 1, 'member_j': j + 1, 'cosine': float(cos[i, j]),
           'diversity': float(diversity_matrix[i, j]), 'with_first': i == 0}
          for i, j in itertools.combinations(range(len(member_params)), 2)]


def run_study(res, config, probs, labels, member_params, k, progress=False):
  """Adds the thesis's analyses to res (see the module docstring); k = 0: no sub-ensembles."""
  acc = {m['member']: m['acc'] for m in res['members']}
  res['distances_to_first'] = [
      {'member': r['member'], 'acc': acc[r['member']], 'layer': r['layer'],
       **{key: r.get(key, float('nan')) for key in ('rtd', 'mse', 'wasserstein')}}
      for r in res['similarity'] if r['reference'] == 'member1']
  res['weight_distances_to_first'] = [
      {'member': i, 'acc': acc[i], **row}
      for i, p in enumerate(member_params[1:], start=2)
      for row in weights.stage_distances(p, member_params[0])]
  pairs = cosine_pairs(member_params, res['diversity_matrix'])
  res['raw_weight_cosine'] = {
      'pairs': pairs, 'correlation': correlation(pairs),  # Figure 6.4: left, centre, right
      'correlation_with_first': correlation([q for q in pairs if q['with_first']]),
      'correlation_others': correlation([q for q in pairs if not q['with_first']])}
  if not k:
    return res
  if len(probs) < k:
    res['notes'].append(f'{len(probs)} members, fewer than K = {k}: no sub-ensemble study '
                        '(analyze --subensembles K with K <= members).')
    return res
  fix_first = subensembles.fixes_first(config)
  if progress:
    print(f'   sub-ensembles: {subensembles.count(len(probs), k, fix_first)} of {k} members',
          flush=True)
  rows = subensembles.study(probs, labels, k, res['metric'], fix_first)
  res['subensembles'] = {'k': k, 'fix_first': fix_first, 'count': len(rows), 'rows': rows,
                         'table': subensembles.summary_table(rows),
                         'line': subensembles.separating_line(rows)}
  return res


def _line_csv(line):
  if line is None:
    return []
  return [{'mean_member_acc': float(x), 'diversity': float(y), 'low': float(lo),
           'high': float(hi)} for x, y, lo, hi in
          zip(line['x'], line['y'], line['y_low'], line['y_high'])]


def write_files(res, out):
  """The study's CSV tables and PNG figures in out; returns {name: path}."""
  p = lambda name: os.path.join(out, name)
  files = {}
  if res.get('distances_to_first') or res.get('weight_distances_to_first'):
    files['distances_to_member1.csv'] = tables.write_csv(
        p('distances_to_member1.csv'), res['distances_to_first'],
        ['member', 'acc', 'layer', 'rtd', 'mse', 'wasserstein'])
    files['weight_distances_to_member1.csv'] = tables.write_csv(
        p('weight_distances_to_member1.csv'), res['weight_distances_to_first'],
        ['member', 'acc', 'stage', 'log10_mse', 'l2', 'num_params'])
    png = study_plots.distances_vs_accuracy(p('distances_to_member1.png'),
                                            res['distances_to_first'],
                                            res['weight_distances_to_first'])
    if png:
      files['distances_to_member1.png'] = png
  if 'raw_weight_cosine' in res and res['raw_weight_cosine']['pairs']:
    pairs = res['raw_weight_cosine']['pairs']
    files['raw_weight_cosine.csv'] = tables.write_csv(p('raw_weight_cosine.csv'), pairs)
    rc = res['raw_weight_cosine']
    files['raw_weight_cosine.png'] = study_plots.cosine_rows(
        p('raw_weight_cosine.png'), pairs, [rc.get(k, float('nan')) for k in (
            'correlation', 'correlation_with_first', 'correlation_others')])
  if 'subensembles' in res:
    s = res['subensembles']
    files['subensembles.csv'] = tables.write_csv(p('subensembles.csv'), s['rows'])
    files['subensembles_table.csv'] = tables.write_csv(p('subensembles_table.csv'), s['table'],
                                                       TABLE_COLUMNS)
    if s['line'] is not None:
      files['subensembles_svm.csv'] = tables.write_csv(p('subensembles_svm.csv'),
                                                       _line_csv(s['line']))
    best = subensembles.extremes(s['rows'])[1]
    files['subensembles.png'] = study_plots.subensembles(
        p('subensembles.png'), [(res.get('name') or 'run', s['rows'], best, s['line'])], s['k'])
  return files


def _img(files, name, alt):
  return [f'![{alt}]({name})', ''] if name in files else []


def _table_rows(table, method=None):
  return [{**({'method': method} if method else {}), **r, **{
      key: f"{r[f'{key}_mean']:.2f} +- {r[f'{key}_std']:.2f}"
      for key in ('mean_member_acc', 'diversity', 'ensemble_acc')}} for r in table]


def _svm_line(line):
  if line is None:
    return 'No separating line: too few ensembles, or all alike.'
  return (f"Linear SVM (scikit-learn LinearSVC, standardised axes) between the best and the "
          f"worst halves: {line['coef_acc']:.4g} x avg. acc. {line['coef_div']:+.4g} x div. "
          f"{line['intercept']:+.4g} = 0, separating {100 * line['train_accuracy']:.1f}% of "
          f"them; dashed: 95% band over {line['bootstrap']} bootstrap refits.")


def report_lines(res, files):
  """tables.md section of the thesis's analyses."""
  if 'raw_weight_cosine' not in res:
    return []
  md = ['## The thesis\'s analyses (Sections 4 and 6)', '',
        '**Figures 4.2 / 4.3** (distances_to_member1.png, .csv, '
        'weight_distances_to_member1.csv): accuracy of member i against its RTD, MSE and '
        'Wasserstein distance (W1 between the two clouds of representations, Euclidean '
        'cost) to member 1 on each feature map, and against the log10 MSE between the weights '
        'of each stage; the thesis finds accuracy falling as a member moves away from '
        'member 1.', '']
  md += _img(files, 'distances_to_member1.png', 'distances to member 1')
  rc = res['raw_weight_cosine']
  md += ['**Figures 6.2 / 6.4** (raw_weight_cosine.png, .csv): cosine of the raw weight '
         'vectors w_i.w_j / (|w_i| |w_j|) of each pair of members against their diversity '
         '(pairs with member 1 apart); Pearson correlation '
         f"{tables.fmt(rc['correlation'], '.3f')} over all pairs, "
         f"{tables.fmt(rc.get('correlation_with_first'), '.3f')} over the pairs with member 1, "
         f"{tables.fmt(rc.get('correlation_others'), '.3f')} over the others (the thesis: -0.625 "
         'across its runs, 0.02 on average within a run).', '']
  md += _img(files, 'raw_weight_cosine.png', 'weight cosine against diversity')
  if 'subensembles' in res:
    s = res['subensembles']
    which = ('containing member 1' if s['fix_first'] else 'of any members')
    md += [f"**Figure 6.1 / Table 6.1** (subensembles.png, subensembles_table.csv, every "
           f"ensemble in subensembles.csv): the {s['count']} ensembles of {s['k']} {which}; "
           'mean member accuracy against diversity coloured by ensemble accuracy, the best 5 % '
           'marked. ' + _svm_line(s['line']), '',
           tables.markdown_table(_table_rows(s['table']), [
               ('group', ''), ('ensembles', 'ensembles'), ('mean_member_acc', 'avg. acc. (%)'),
               ('diversity', 'div.'), ('ensemble_acc', 'ens. acc. (%)')],
               {c: str for c in ('group', 'ensembles', 'mean_member_acc', 'diversity',
                                 'ensemble_acc')}), '',
           'The thesis (BYOL ResNet-50, CIFAR-100, 15 members): StarSSE worst 5 % '
           '85.91 / 67.11 / 87.24, best 5 % 85.95 / 67.44 / 87.62; Local DE worst 86.05 / '
           '63.13 / 87.19, best 86.09 / 63.81 / 87.57 (avg. acc. / div. / ens. acc.).', '']
    md += _img(files, 'subensembles.png', 'sub-ensembles')
  md += ['**Table 6.2**: the pairwise diversity matrix above (diversity.csv).', '']
  return md


def write_pooled(out, results):
  """Table 6.1 / Figure 6.1 per method and Figure 6.2 over all runs into out; {name: path}."""
  os.makedirs(out, exist_ok=True)
  p = lambda name: os.path.join(out, name)
  files, md = {}, ['# The thesis\'s analyses pooled over runs', '']
  runs = [r for r in results if 'raw_weight_cosine' in r]
  groups = [(f"{k + 1}: {r.get('name') or 'run'}", r['raw_weight_cosine']['pairs'])
            for k, r in enumerate(runs)]
  pairs = [dict(q, run=label) for label, qs in groups for q in qs]
  if pairs:
    within = [correlation(qs) for _, qs in groups]
    within = [c for c in within if np.isfinite(c)]
    glob = correlation(pairs)
    files['weight_cosine_pairs.csv'] = tables.write_csv(p('weight_cosine_pairs.csv'), pairs)
    files['weight_cosine_vs_diversity.png'] = study_plots.cosine_vs_diversity(
        p('weight_cosine_vs_diversity.png'), groups, f"all runs: corr {tables.fmt(glob, '.3f')}")
    md += ['**Figure 6.2** (weight_cosine_vs_diversity.png, weight_cosine_pairs.csv): raw '
           f'weight cosine against diversity over {len(pairs)} pairs of {len(groups)} runs, '
           f"one colour a run. Pearson correlation over all pairs {tables.fmt(glob, '.3f')}; "
           'mean of the within-run correlations '
           f"{tables.fmt(float(np.mean(within)) if within else float('nan'), '.3f')} (the "
           'thesis: -0.625 and 0.02).', '', '![weight cosine](weight_cosine_vs_diversity.png)',
           '']
  methods = {}
  for r in results:
    if 'subensembles' in r:
      methods.setdefault(r.get('name') or 'run', []).append(r['subensembles'])
  table, panels = [], []
  for name, studies in methods.items():
    ks = {s['k'] for s in studies}
    if len(ks) > 1:
      raise UserError(f'runs of {name} have sub-ensembles of sizes {sorted(ks)}: analyse them '
                      'with one --subensembles K')
    rows = [row for s in studies for row in s['rows']]
    table += [{'method': name, **row} for row in subensembles.summary_table(rows)]
    panels.append((f'{name} ({len(studies)} runs)', rows, subensembles.extremes(rows)[1],
                   subensembles.separating_line(rows)))
  if table:
    files['subensembles_table.csv'] = tables.write_csv(p('subensembles_table.csv'), table,
                                                       ['method'] + TABLE_COLUMNS)
    files['subensembles.png'] = study_plots.subensembles(p('subensembles.png'), panels,
                                                         next(iter(ks)))
    md += ['**Table 6.1 / Figure 6.1** (subensembles_table.csv, subensembles.png): each '
           "method's sub-ensembles of all its runs pooled; worst and best 5 % by ensemble "
           'accuracy.', '', tables.markdown_table(_table_rows(table), [
               ('method', 'method'), ('group', ''), ('ensembles', 'ensembles'),
               ('mean_member_acc', 'avg. acc. (%)'), ('diversity', 'div.'),
               ('ensemble_acc', 'ens. acc. (%)')], {c: str for c in (
                   'method', 'group', 'ensembles', 'mean_member_acc', 'diversity',
                   'ensemble_acc')}), '', '![sub-ensembles](subensembles.png)', '']
    for title, _, _, line in panels:
      md += [f'{title}: ' + _svm_line(line), '']
  if files:
    with open(p('study.md'), 'w') as f:
      f.write('\n'.join(md))
    files['study.md'] = p('study.md')
  return files
