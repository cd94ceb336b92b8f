"""The RTD metric of the RTD literature (Barannikov et al., ICML 2022; IlyaTrofimov/RTD).

For two representations x [n, d1], y [n, d2] of the same n examples (flattened per example):

  r1 = D(x) / q(D(x)),  r2 = D(y) / q(D(y))   D the Euclidean distance matrix [n, n], q its
                                               0.9-quantile over all n^2 entries (diagonal too)
  M  = [[0, r1^T], [r1, min(r1, r2)]]          [2n, 2n]; entries below 1e-6 x mean(r1) set to 0
  rtd1(x, y) = sum of (death - birth) over the H1 bars of the Vietoris-Rips filtration of M
  RTD(x, y)  = (rtd1(x, y) + rtd1(y, x)) / 2

averaged over `trials` random subsets of `batch` examples (trial t takes the first `batch`
indices of the t-th permutation drawn by numpy.random.default_rng(seed)); when n <= batch every
subset is the whole set and RTD is computed once, deterministically.

It differs from the thesis's RTD (enstransfer_jax.losses.rtd_loss: distances over sqrt(d), the
`card` longest bars, the second direction's deaths read from [[0, B^T], [B, B]]), which stays
the training loss and the analysis's `rtd` column. H1 barcodes: giotto-ph, single-threaded.
"""

import numpy as np

from enstransfer_jax.analysis import features

QUANTILE = 0.9
ZERO_BELOW = 1e-6  # entries below ZERO_BELOW x mean(r1) are set to 0
_CHUNK = 1 << 16  # feature columns converted to float64 at a time


def distances_from_gram(gram):
  """Euclidean distances [n, n] (float64) from a Gram matrix of the features, centred or not."""
  g = np.asarray(gram, np.float64)
  sq = np.diag(g)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
  d2 = 0.5 * (d2 + d2.T)
  np.fill_diagonal(d2, 0.0)
  return np.sqrt(d2)


def distance_matrix(x):
  """Euclidean distances [n, n] (float64) between the rows of x, over column chunks."""
  x = features.flat(x, 'features')
  gram = np.zeros((x.shape[0], x.shape[0]))
  for start in range(0, x.shape[1], _CHUNK):
    chunk = x[:, start:start + _CHUNK].astype(np.float64)
    chunk -= chunk.mean(0, keepdims=True)  # distances are unchanged; less cancellation
    gram += chunk @ chunk.T
  return distances_from_gram(gram)


def h1_total_persistence(dm):
  """Sum of the finite H1 bar lengths of the Vietoris-Rips filtration of distance matrix dm."""
  import gph  # pylint: disable=g-import-not-at-top
  dgm = gph.ripser_parallel(np.asarray(dm, np.float64), maxdim=1, metric='precomputed',
                            collapse_edges=False, n_threads=1)['dgms'][1]
  dgm = np.asarray(dgm, np.float64).reshape(-1, 2)
  dgm = dgm[np.isfinite(dgm[:, 1])]
  return float(np.sum(dgm[:, 1] - dgm[:, 0]))


def _normalised(d):
  q = np.quantile(d, QUANTILE)
  return d / q if q > 0 else None


def rtd1(r1, r2):
  """One direction: H1 total persistence of [[0, r1^T], [r1, min(r1, r2)]], r1 and r2
  already normalised."""
  n = r1.shape[0]
  m = np.zeros((2 * n, 2 * n))
  m[n:, :n] = r1
  m[:n, n:] = r1.T
  m[n:, n:] = np.minimum(r1, r2)
  m[m < ZERO_BELOW * r1.mean()] = 0.0
  return h1_total_persistence(m)


def _check(trials, batch):
  if int(trials) < 1:
    raise ValueError(f'trials={trials} must be at least 1')
  if int(batch) < 2:
    raise ValueError(f'batch={batch} must be at least 2 examples')


def rtd_score_from_distances(dx, dy, *, trials=10, batch=500, seed=0):
  """RTD from the two distance matrices [n, n] of the same examples (see the module doc)."""
  _check(trials, batch)
  dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
  if dx.ndim != 2 or dx.shape[0] != dx.shape[1] or dx.shape != dy.shape:
    raise ValueError(f'distance matrices of shapes {dx.shape} and {dy.shape}: both must be '
                     '[n, n] over the same examples')
  n = dx.shape[0]
  if n <= batch:
    subsets = [np.arange(n)]
  else:
    rng = np.random.default_rng(seed)
    subsets = [rng.permutation(n)[:batch] for _ in range(int(trials))]
  total = 0.0
  for idx in subsets:
    r1 = _normalised(dx[np.ix_(idx, idx)])
    r2 = _normalised(dy[np.ix_(idx, idx)])
    if r1 is None or r2 is None:  # 90% of the distances are 0: the normalisation is undefined
      return float('nan')
    total += 0.5 * (rtd1(r1, r2) + rtd1(r2, r1))
  return total / len(subsets)


def rtd_score(x, y, *, trials=10, batch=500, seed=0):
  """The RTD metric of features x [n, ...] and y [n, ...] of the same n examples.

  Args:
    x, y: features (numpy or jax arrays), flattened per example; widths may differ.
    trials: random subsets averaged over when n > batch.
    batch: examples per subset; n <= batch uses all examples once (deterministic).
    seed: seed of the subsets.

  Returns:
    float >= 0: 0 for equal representations (up to scale, rotation and translation);
    NaN when 90% of a subset's distances are zero (the normalisation is undefined).
  """
  x, y = features.flat(x, 'x'), features.flat(y, 'y')
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'features of {x.shape[0]} and {y.shape[0]} examples: compare the same '
                     'examples in both models')
  _check(trials, batch)
  return rtd_score_from_distances(distance_matrix(x), distance_matrix(y), trials=trials,
                                  batch=batch, seed=seed)
