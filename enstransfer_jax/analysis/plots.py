"""The analysis figures as PNG files (matplotlib, Agg backend; nothing is shown on screen).

Every function takes the output path first, draws one figure, saves it and returns the path.
"""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def ensemble_accuracy(path, sizes, ensemble_acc, member_acc, soup_acc=None):
  """Ensemble accuracy (%) against the number of members, members' own accuracy as dots."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(sizes, 100 * np.asarray(ensemble_acc), 'o-', label='ensemble of members 1..k')
  ax.plot(range(1, len(member_acc) + 1), 100 * np.asarray(member_acc), 's', alpha=0.7,
          label='member k')
  if soup_acc is not None:
    ax.axhline(100 * soup_acc, color='gray', ls='--', label='uniform soup')
  ax.set(xlabel='k', ylabel='accuracy (%)', title='Ensemble accuracy against size')
  ax.set_xticks(list(sizes))
  ax.legend(fontsize=8)
  return _save(fig, path)


def heatmap(path, matrix, title, labels=None, fmt='.1f', cmap='viridis'):
  """A square matrix (e.g. pairwise diversity) with its values written in the cells."""
  m = np.asarray(matrix, float)
  k = m.shape[0]
  labels = labels or [str(i + 1) for i in range(k)]
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.6 + 0.7 * k))
  im = ax.imshow(m, cmap=cmap)
  for i in range(k):
    for j in range(k):
      bright = im.norm(m[i, j]) > 0.6
      ax.text(j, i, format(m[i, j], fmt), ha='center', va='center', fontsize=8,
              color='k' if bright else 'w')
  ax.set_xticks(range(k), labels)
  ax.set_yticks(range(k), labels)
  ax.set_title(title)
  fig.colorbar(im, ax=ax)
  return _save(fig, path)


def similarity_vs_accuracy(path, rows, member_acc, measure):
  """One panel per feature map: `measure` to member 1 / the pre-trained model vs accuracy."""
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
  for ax, layer in zip(axes[0], layers):
    for ref, marker in (('member1', 'o'), ('pretrained', 's')):
      sel = [r for r in rows if r['layer'] == layer and r['reference'] == ref
             and np.isfinite(r[measure])]
      if sel:
        ax.scatter([r[measure] for r in sel], [100 * member_acc[r['member'] - 1] for r in sel],
                   marker=marker, label=f'to {ref}')
        for r in sel:
          ax.annotate(str(r['member']), (r[measure], 100 * member_acc[r['member'] - 1]),
                      fontsize=7)
    ax.set(title=layer, xlabel=measure.upper(), ylabel='member accuracy (%)')
  axes[0][0].legend(fontsize=7)
  return _save(fig, path)


def scatter(path, x, y, xlabel, ylabel, title, labels=None):
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  ax.scatter(x, y)
  for i, text in enumerate(labels or []):
    ax.annotate(text, (x[i], y[i]), fontsize=7)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  return _save(fig, path)


def weight_distances(path, rows):
  """Per-stage L2 distance from the pre-trained model, one bar group per stage."""
  stages = list(dict.fromkeys(r['stage'] for r in rows))
  members = sorted(set(r['member'] for r in rows))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  width = 0.8 / max(len(members), 1)
  for k, m in enumerate(members):
    vals = {r['stage']: r['l2'] for r in rows if r['member'] == m}
    ax.bar(np.arange(len(stages)) + k * width, [vals.get(s, np.nan) for s in stages], width,
           label=f'member {m}')
  ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, stages)
  ax.set(ylabel='||w - w_pre||_2', title='Distance from the pre-trained model')
  ax.legend(fontsize=7)
  return _save(fig, path)


def interpolation(path, lines):
  """Loss and accuracy along each line: {label: [{'alpha', 'loss', 'acc'}]}."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  for label, pts in lines.items():
    a = [p['alpha'] for p in pts]
    ls = '--' if label.startswith('pre') else '-'
    ax_loss.plot(a, [p['loss'] for p in pts], ls, marker='.', label=label)
    ax_acc.plot(a, [100 * p['acc'] for p in pts], ls, marker='.', label=label)
  ax_loss.set(xlabel='alpha', ylabel='test loss (NLL)', title='Loss along lines')
  ax_acc.set(xlabel='alpha', ylabel='test accuracy (%)', title='Accuracy along lines')
  ax_acc.legend(fontsize=7, ncol=2)
  return _save(fig, path)


def plane(path, result):
  """Heat maps of test accuracy and loss on the plane through members 1..3."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, scale in ((axes[0], 'acc', 100.0), (axes[1], 'loss', 1.0)):
    im = ax.contourf(result['x'], result['y'], scale * np.asarray(result[key]), levels=20,
                     cmap='viridis')
    fig.colorbar(im, ax=ax)
    for k, (x, y) in enumerate(result['members']):
      ax.plot(x, y, 'wo', mec='k')
      ax.annotate(f'm{k + 1}', (x, y), xytext=(4, 4), textcoords='offset points', color='w',
                  fontsize=9)
    ax.set(title=f"test {'accuracy (%)' if key == 'acc' else 'loss'} (m1..m3: members)",
           aspect='equal')
  return _save(fig, path)


def learning_rate(path, lrs, steps_per_epoch):
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.plot(np.arange(len(lrs)) / steps_per_epoch, lrs)
  ax.set(xlabel='epoch', ylabel='learning rate', title='Learning-rate schedule')
  return _save(fig, path)


def ood_histograms(path, scores, title):
  """One panel per score: histograms of in- and out-of-distribution values.

  scores: {name: (in_values, out_values)}.
  """
  fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 3.0), squeeze=False)
  for ax, (name, (s_in, s_out)) in zip(axes[0], scores.items()):
    lo = min(float(np.min(s_in)), float(np.min(s_out)))
    hi = max(float(np.max(s_in)), float(np.max(s_out)), lo + 1e-6)
    bins = np.linspace(lo, hi, 31)
    ax.hist(s_in, bins, alpha=0.6, density=True, label='in distribution')
    ax.hist(s_out, bins, alpha=0.6, density=True, label='OOD')
    ax.set(xlabel=name.replace('_', ' '), ylabel='density')
  axes[0][0].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def reliability(path, curves):
  """Reliability diagrams: accuracy against mean confidence per bin, one panel per curve.

  curves: {name: calibration.reliability(...) dict}; bars at the bin accuracy, the gap to the
  diagonal shaded.
  """
  fig, axes = plt.subplots(1, len(curves), figsize=(3.3 * len(curves), 3.3), squeeze=False)
  for ax, (name, c) in zip(axes[0], curves.items()):
    lo, hi = np.asarray(c['lo']), np.asarray(c['hi'])
    acc, conf = np.asarray(c['accuracy'], float), np.asarray(c['confidence'], float)
    full = np.asarray(c['count']) > 0
    ax.bar(lo[full], acc[full], hi[full] - lo[full], align='edge', edgecolor='k', lw=0.5,
           label='accuracy')
    ax.bar(lo[full], conf[full] - acc[full], hi[full] - lo[full], bottom=acc[full],
           align='edge', color='r', alpha=0.3, label='gap to confidence')
    ax.plot([0, 1], [0, 1], 'k--', lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel='confidence', ylabel='accuracy', title=name,
           aspect='equal')
  axes[0][0].legend(fontsize=7, loc='upper left')
  return _save(fig, path)
