"""The figures of the thesis's own analyses (study.py) as PNG files (matplotlib, Agg)."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from enstransfer_jax.analysis import plots  # pylint: disable=wrong-import-position

MEASURES = (('rtd', 'RTD'), ('mse', 'MSE'), ('wasserstein', 'Wasserstein'))


def distances_vs_accuracy(path, rep_rows, weight_rows):
  """Figures 4.2 / 4.3: accuracy of member i against its distance to member 1, one panel per
  measure (rows: RTD, MSE, Wasserstein of the maps; log10 MSE of the weights) and map / stage
  (columns); colour = member number."""
  panels = []
  for key, label in MEASURES:
    cols = list(dict.fromkeys(r['layer'] for r in rep_rows))
    if any(np.isfinite(r[key]) for r in rep_rows):
      panels.append([(c, label, key, [r for r in rep_rows if r['layer'] == c]) for c in cols])
  if weight_rows:
    cols = list(dict.fromkeys(r['stage'] for r in weight_rows))
    panels.append([(c, 'log10 MSE of weights', 'log10_mse',
                    [r for r in weight_rows if r['stage'] == c]) for c in cols])
  if not panels:
    return None
  ncol = max(len(p) for p in panels)
  members = sorted({r['member'] for p in panels for _, _, _, rs in p for r in rs})
  norm = matplotlib.colors.Normalize(min(members), max(max(members), min(members) + 1))
  fig, axes = plt.subplots(len(panels), ncol, figsize=(2.9 * ncol, 2.5 * len(panels)),
                           squeeze=False)
  for row, panel in zip(axes, panels):
    for ax, (col, label, key, rs) in zip(row, panel):
      rs = [r for r in rs if np.isfinite(r[key])]
      ax.scatter([r[key] for r in rs], [100 * r['acc'] for r in rs],
                 c=[r['member'] for r in rs], cmap='viridis', norm=norm, s=30)
      for r in rs:
        ax.annotate(str(r['member']), (r[key], 100 * r['acc']), fontsize=7,
                    xytext=(3, 2), textcoords='offset points')
      ax.set(xlabel=f'{label}, {col}', ylabel='accuracy (%)')
    for ax in row[len(panel):]:
      ax.axis('off')
  fig.suptitle('Accuracy of member i against its distance to member 1', fontsize=10)
  return plots._save(fig, path)  # pylint: disable=protected-access


def subensembles(path, panels, k):
  """Figure 6.1: one panel per (title, rows, best rows, line): mean member accuracy against
  diversity, colour = ensemble accuracy, 'x' = best 5 %, SVM line solid, 95 % band dashed."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
  for ax, (title, rows, best, line) in zip(axes[0], panels):
    x = 100 * np.array([r['mean_member_acc'] for r in rows])
    y = np.array([r['diversity'] for r in rows])
    c = 100 * np.array([r['ensemble_acc'] for r in rows])
    sc = ax.scatter(x, y, c=c, cmap='viridis', s=8)
    ax.scatter(100 * np.array([r['mean_member_acc'] for r in best]),
               [r['diversity'] for r in best], marker='x', color='red', s=25,
               label='best 5%')
    if line is not None:
      ax.plot(line['x'], line['y'], 'k-', lw=1.2, label='SVM: best vs worst half')
      ax.plot(line['x'], line['y_low'], 'k--', lw=0.8, label='95% band (bootstrap)')
      ax.plot(line['x'], line['y_high'], 'k--', lw=0.8)
      ax.set_ylim(y.min() - 0.05 * np.ptp(y) - 1e-9, y.max() + 0.05 * np.ptp(y) + 1e-9)
    ax.set(xlabel='mean member accuracy (%)', ylabel='diversity',
           title=f'{title}: {len(rows)} ensembles of {k}')
    fig.colorbar(sc, ax=ax, label='ensemble accuracy (%)')
    ax.legend(fontsize=7)
  return plots._save(fig, path)  # pylint: disable=protected-access


def cosine_vs_diversity(path, groups, title):
  """Figures 6.2 / 6.4: raw weight cosine against pairwise diversity; groups: [(label, pairs)]
  each drawn in its own colour."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, pairs in groups:
    ax.scatter([p['cosine'] for p in pairs], [p['diversity'] for p in pairs], s=18,
               label=label, alpha=0.8)
  ax.set(xlabel='cosine of weights  w_i.w_j / (|w_i| |w_j|)', ylabel='pairwise diversity',
         title=title)
  ax.legend(fontsize=7)
  return plots._save(fig, path)  # pylint: disable=protected-access


def cosine_rows(path, pairs, correlations):
  """Figure 6.4, one run: raw weight cosine against diversity over all pairs (left), the pairs
  with member 1 (centre, orange) and the other pairs (right, green), each with its Pearson r
  (correlations: the three values, nan where undefined)."""
  first = [p for p in pairs if p['with_first']]
  others = [p for p in pairs if not p['with_first']]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
  panels = (('all pairs', [(first, 'tab:orange'), (others, 'tab:green')]),
            ('pairs with member 1', [(first, 'tab:orange')]),
            ('pairs without member 1', [(others, 'tab:green')]))
  for ax, (title, groups), r in zip(axes, panels, correlations):
    for sel, colour in groups:
      ax.scatter([p['cosine'] for p in sel], [p['diversity'] for p in sel], s=18, color=colour)
    ax.set(xlabel='cosine of weights', title=f'{title}: r = {r:.3f}')
  axes[0].set_ylabel('pairwise diversity')
  return plots._save(fig, path)  # pylint: disable=protected-access
