"""Sub-ensembles of a larger ensemble (the thesis's Section 6, Figure 6.1, Table 6.1).

The thesis trains StarSSE twice with 15 members and Local DE once with 15, forms the
ensembles of 5 and compares them: 2 x C(14, 4) = 2002 StarSSE ensembles that all contain
model 1 (which outperforms the others), C(15, 5) = 3003 Local DE ensembles (every subset:
its members are interchangeable). For an ensemble S of K members (probabilities averaged):

  mean member accuracy  mean over i in S of acc_i
  diversity             mean over pairs {i, j} in S of the pairwise diversity
                        100 * P(pred_i != pred_j) / max(err_i, err_j)   (metrics.py)
  ensemble accuracy     accuracy of mean over i in S of p_i

study() walks the combinations in lexicographic order (itertools.combinations' order)
depth first, keeping one running sum of probabilities per depth: K arrays of the test split's
size are held, never one per ensemble. extremes() gives the worst and best 5 %: the
ensembles sorted by ensemble accuracy (ties: the earlier combination counts as the worse),
round(5 % of them), at least one, from each end. separating_line() fits scikit-learn's
LinearSVC between the best and the worst halves (by the same order; the middle one of an odd
count is left out) in the plane (mean member accuracy, diversity), both standardised, and
gives the 95 % band of the line as the pointwise 2.5 / 97.5 percentiles of the lines refit on
bootstrap resamples of the ensembles.
"""

import math

import numpy as np

from enstransfer_jax import metrics
from enstransfer_jax.errors import UserError

FRACTION = 0.05  # the thesis's "worst 5 %" / "best 5 %"
BOOTSTRAP = 200  # refits of the SVM line for its 95 % band


def fixes_first(config):
  """Whether member 1 is in every sub-ensemble: yes for snapshot methods (SSE, StarSSE and
  their variants: member 1 is the fully fine-tuned model), no for deep ensembles."""
  return str(config.get('ensemble', '') or '') not in ('local_de', 'global_de')


def count(members, k, fix_first=True):
  """How many K-member sub-ensembles of `members` models study() forms."""
  return math.comb(members - 1, k - 1) if fix_first else math.comb(members, k)


def check_size(members, k):
  if k < 2:
    raise UserError(f'sub-ensembles need K >= 2 members, got {k}')
  if k > members:
    raise UserError(f'sub-ensembles of {k} members need at least {k} members, the run has '
                     f'{members}')


def study(probs, labels, k, metric='top1', fix_first=True):
  """One row per K-member sub-ensemble: {'members' (1-based, '-'-joined), 'mean_member_acc',
  'diversity', 'ensemble_acc'}, accuracies as fractions; combinations in lexicographic order.
  probs: [M] arrays [n, classes] (a list, or a memory-mapped stack)."""
  m = len(probs)
  check_size(m, k)
  score = metrics.METRICS[metric]
  acc = np.array([score(p, labels) for p in probs])
  div = metrics.pairwise_diversity(probs, labels)
  rows = []

  def walk(start, chosen, running):
    if len(chosen) == k:
      idx = np.array(chosen)
      pairs = div[np.ix_(idx, idx)][np.triu_indices(k, 1)]
      rows.append({'members': '-'.join(str(i + 1) for i in chosen),
                   'mean_member_acc': float(acc[idx].mean()),
                   'diversity': float(pairs.mean()),
                   'ensemble_acc': float(score(running / k, labels))})
      return
    for j in range(start, m - (k - len(chosen)) + 1):
      walk(j + 1, chosen + [j], np.asarray(probs[j], np.float64) if running is None
           else running + probs[j])

  if fix_first:
    walk(1, [0], np.asarray(probs[0], np.float64))
  else:
    walk(0, [], None)
  return rows


def _order(rows):
  """Indices of rows from the worst ensemble accuracy to the best (stable)."""
  return np.argsort(np.array([r['ensemble_acc'] for r in rows]), kind='stable')


def extremes(rows, fraction=FRACTION):
  """(worst rows, best rows): round(fraction * n) (at least 1) from each end."""
  if not rows:
    raise ValueError('no sub-ensembles to rank')
  n_sel = max(1, int(round(fraction * len(rows))))
  order = _order(rows)
  return [rows[i] for i in order[:n_sel]], [rows[i] for i in order[-n_sel:]]


def summary_table(rows, fraction=FRACTION):
  """Table 6.1: per group (worst / best 5 %) mean and population std of the mean member
  accuracy (%), diversity and ensemble accuracy (%)."""
  worst, best = extremes(rows, fraction)
  out = []
  pct = round(100 * fraction, 2)
  for group, sel in ((f'worst {pct:g}%', worst), (f'best {pct:g}%', best)):
    row = {'group': group, 'ensembles': len(sel), 'of': len(rows)}
    for key, scale in (('mean_member_acc', 100.0), ('diversity', 1.0), ('ensemble_acc', 100.0)):
      v = scale * np.array([r[key] for r in sel])
      row[f'{key}_mean'], row[f'{key}_std'] = float(v.mean()), float(v.std())
    out.append(row)
  return out


def _fit_line(x, y, labels):
  """LinearSVC on standardised (x, y); the line a x + b y + c = 0 in the original units."""
  from sklearn.svm import LinearSVC  # pylint: disable=g-import-not-at-top
  feats = np.stack([x, y], 1)
  mu, sd = feats.mean(0), feats.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  svm = LinearSVC(C=1.0, dual=False).fit((feats - mu) / sd, labels)
  w, c0 = svm.coef_[0], float(svm.intercept_[0])
  a, b = w / sd
  return float(a), float(b), float(c0 - np.sum(w * mu / sd)), svm, (feats - mu) / sd


def separating_line(rows, bootstrap=None, grid=50, seed=0):
  """{'coef_acc', 'coef_div', 'intercept' (the line coef_acc * acc% + coef_div * div +
  intercept = 0), 'train_accuracy', 'x' (grid of mean member acc %), 'y', 'y_low', 'y_high'
  (the line's diversity on the grid and its 95 % bootstrap band)} or None when the halves
  cannot be told apart (fewer than 2 ensembles per half or one half constant)."""
  order = _order(rows)
  half = len(rows) // 2
  if half < 2:
    return None
  sel = np.concatenate([order[:half], order[-half:]])
  lab = np.r_[np.zeros(half, int), np.ones(half, int)]
  x = 100.0 * np.array([rows[i]['mean_member_acc'] for i in sel])
  y = np.array([rows[i]['diversity'] for i in sel])
  if np.ptp(x) == 0 and np.ptp(y) == 0:
    return None
  a, b, c, svm, z = _fit_line(x, y, lab)
  xs = np.linspace(x.min(), x.max(), grid)
  line = lambda a_, b_, c_: -(a_ * xs + c_) / b_ if b_ != 0 else np.full_like(xs, np.nan)
  rng = np.random.default_rng(seed)
  boot = []
  for _ in range(BOOTSTRAP if bootstrap is None else bootstrap):
    idx = rng.integers(0, len(lab), len(lab))
    if lab[idx].min() == lab[idx].max():
      continue
    boot.append(line(*_fit_line(x[idx], y[idx], lab[idx])[:3]))
  boot = np.array(boot) if boot else np.full((1, grid), np.nan)
  return {'coef_acc': a, 'coef_div': b, 'intercept': c,
          'train_accuracy': float(svm.score(z, lab)), 'x': xs, 'y': line(a, b, c),
          'y_low': np.nanpercentile(boot, 2.5, 0) if np.isfinite(boot).any() else boot[0],
          'y_high': np.nanpercentile(boot, 97.5, 0) if np.isfinite(boot).any() else boot[0],
          'bootstrap': int(len(boot))}
