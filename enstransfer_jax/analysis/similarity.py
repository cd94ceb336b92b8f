"""Similarity of two representations of the same n examples: linear CKA, MSE, RTD, RTD-Lite.

Features X [n, d1] and Y [n, d2] (feature maps are flattened per example):

  linear CKA (Kornblith et al., 2019), with Xc, Yc the column-centred features,
      CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)             (feature space)
          = <Kc, Lc>_F / (||Kc||_F ||Lc||_F),  Kc = Xc Xc^T, Lc = Yc Yc^T (example space)
      both are HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels; the example-space
      form is used when n < d, so a [n, n] Gram matrix per model and map is all that is kept.
  MSE     mean over examples and features of (X - Y)^2 (the thesis's MSELoss; needs d1 = d2).
  Wasserstein  W1 between the empirical distributions of the n rows of X and of Y, Euclidean
          cost, exact by assignment (analysis/wasserstein.py; needs d1 = d2).
  RTD     the thesis's symmetric Representation Topology Divergence
          (enstransfer_jax.losses.rtd_loss) of the first `points` examples, with `card` large
          enough to keep every H1 pair.
  RTD-Lite the RTDLiteLoss (enstransfer_jax.losses.rtd_lite_loss, distances / sqrt(d)) of all
          n examples, in float64 from the centred Gram matrices (analysis/rtd_lite.py).
  RTD metric  the RTD of the RTD literature (analysis/rtd_metric.py: 0.9-quantile
          normalisation, mean over `rtd_trials` subsets of `rtd_batch` examples), from the
          distances the centred Grams give.

Inputs are numpy or jax arrays; statistics are accumulated in float64 on the host, over
column chunks (a ResNet-50 layer1 map at 224 px has 800k values per example). RTD's
persistent homology is the costly part (seconds per pair at 128 points, minutes at 256).
"""

import numpy as np

from enstransfer_jax.analysis import features, rtd_lite as lite, rtd_metric, wasserstein
from enstransfer_jax.losses import rtd_loss

RTD_POINTS = 128  # examples used for RTD (its filtration has 2 * points vertices)
_CHUNK = 1 << 16  # feature columns converted to float64 at a time (layer1 of ResNet-50: 800k)


def _check_pair(x, y):
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'features of {x.shape[0]} and {y.shape[0]} examples: compare the same '
                     'examples in both models')


def _column_chunks(x, *others):
  """(x[:, s], *others[:, s]) in float64 for column slices s of at most _CHUNK columns."""
  for start in range(0, x.shape[1], _CHUNK):
    cols = slice(start, start + _CHUNK)
    yield (x[:, cols].astype(np.float64),) + tuple(o[:, cols].astype(np.float64) for o in others)


def centered_gram(x):
  """Kc = Xc Xc^T [n, n] float64 of the column-centred features (flattened per example)."""
  x = features.flat(x, 'features')
  gram = np.zeros((x.shape[0], x.shape[0]))
  for (chunk,) in _column_chunks(x):
    chunk -= chunk.mean(0, keepdims=True)
    gram += chunk @ chunk.T
  return gram


def cka_from_grams(kc, lc):
  """Linear CKA from two centred Gram matrices (see centered_gram); 0 if one is constant."""
  kc, lc = np.asarray(kc, np.float64), np.asarray(lc, np.float64)
  if kc.shape != lc.shape:
    raise ValueError(f'Gram matrices of shapes {kc.shape} and {lc.shape}: compare the same '
                     'examples in both models')
  denom = np.linalg.norm(kc) * np.linalg.norm(lc)
  return float(np.sum(kc * lc) / denom) if denom > 0 else 0.0


def linear_cka(x, y):
  """Linear CKA of features x [n, d1], y [n, d2]: 1 for y = a x Q (Q orthogonal, a != 0)."""
  x = features.flat(x, 'x').astype(np.float64)
  y = features.flat(y, 'y').astype(np.float64)
  _check_pair(x, y)
  if x.shape[0] < max(x.shape[1], y.shape[1]):
    return cka_from_grams(centered_gram(x), centered_gram(y))
  x = x - x.mean(0, keepdims=True)
  y = y - y.mean(0, keepdims=True)
  denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  return float(np.linalg.norm(y.T @ x) ** 2 / denom) if denom > 0 else 0.0


def feature_mse(x, y):
  """Mean squared difference of two feature maps of the same shape (float64)."""
  x, y = features.flat(x, 'x'), features.flat(y, 'y')
  if x.shape != y.shape:
    raise ValueError(f'MSE needs features of equal shape, got {x.shape} and {y.shape}')
  total = sum(float(np.sum(np.square(a - b))) for a, b in _column_chunks(x, y))
  return total / x.size


def rtd(x, y, *, points=RTD_POINTS, dim=1):
  """Symmetric RTD of the first `points` examples of x (reference) and y, every pair kept."""
  x, y = features.flat(x, 'x'), features.flat(y, 'y')
  _check_pair(x, y)
  n = min(int(points), x.shape[0])
  if n < 3:
    raise ValueError(f'RTD needs at least 3 examples, got {n}; raise subset / rtd_points')
  card = 2 * n * n  # more than the number of finite H1 pairs of 2n points
  value = rtd_loss(np.asarray(x[:n], np.float32), np.asarray(y[:n], np.float32), dim=dim,
                   card=card, lp=1.0, is_sym=True, mode='minimum')
  return float(value)


def rtd_lite(x, y, *, gram_x=None, gram_y=None):
  """RTD-Lite of x (reference) and y on all their examples (distances / sqrt(width))."""
  x, y = features.flat(x, 'x'), features.flat(y, 'y')
  _check_pair(x, y)
  gx = centered_gram(x) if gram_x is None else gram_x
  gy = centered_gram(y) if gram_y is None else gram_y
  return lite.rtd_lite(rtd_metric.distances_from_gram(gx) / np.sqrt(x.shape[1]),
                       rtd_metric.distances_from_gram(gy) / np.sqrt(y.shape[1]))


def compare(x, y, *, gram_x=None, gram_y=None, rtd_points=RTD_POINTS, with_rtd=True,
            rtd_trials=10, rtd_batch=500):
  """{'cka', 'mse', 'wasserstein', 'rtd', 'rtd_lite', 'rtd_metric'} of one pair of maps
  (rtd_batch=0: no RTD metric); pass cached centred Grams to skip recomputing."""
  x, y = features.flat(x, 'x'), features.flat(y, 'y')
  _check_pair(x, y)
  gx = centered_gram(x) if gram_x is None else gram_x
  gy = centered_gram(y) if gram_y is None else gram_y
  return {
      'cka': cka_from_grams(gx, gy),
      'mse': feature_mse(x, y) if x.shape == y.shape else float('nan'),
      'wasserstein': (wasserstein.wasserstein(x, y) if x.shape == y.shape
                      else float('nan')),
      'rtd': rtd(x, y, points=rtd_points) if with_rtd else float('nan'),
      'rtd_lite': rtd_lite(x, y, gram_x=gx, gram_y=gy),
      'rtd_metric': rtd_metric.rtd_score_from_distances(
          rtd_metric.distances_from_gram(gx), rtd_metric.distances_from_gram(gy),
          trials=rtd_trials, batch=rtd_batch) if rtd_batch else float('nan'),
  }
