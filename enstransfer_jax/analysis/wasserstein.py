"""Wasserstein distance between two representations of the same n examples.

The thesis plots a "Wasserstein distance" between the representations of snapshot 1 and
snapshot i (its Figure 4.2) without defining it. Used here: the 1-Wasserstein (earth mover's)
distance between the two empirical distributions of n representation vectors each, with the
Euclidean ground cost,

    W1(X, Y) = min over permutations s of  (1/n) * sum_k ||x_k - y_s(k)||_2,

X = {x_1..x_n}, Y = {y_1..y_n} in R^d (feature maps flattened per example). With n points of
weight 1/n on both sides an optimal transport plan is a permutation (Birkhoff), so the
minimum is found exactly by the assignment problem (scipy.optimize.linear_sum_assignment) on
the [n, n] matrix of pairwise distances. Unlike MSE it ignores which example is which: it
compares the two clouds of points as distributions. For d = 1 it equals
scipy.stats.wasserstein_distance of the two samples. Distances are accumulated in float64
over column chunks, as the Gram matrices of similarity.py are.
"""

import numpy as np
from scipy import optimize

from enstransfer_jax.analysis import features

_CHUNK = 1 << 16  # feature columns converted to float64 at a time


def cross_distances(x, y):
  """[n, m] Euclidean distances between the rows of x [n, d] and y [m, d] (float64)."""
  x, y = features.flat(x, 'x', min_examples=1), features.flat(y, 'y', min_examples=1)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'the Wasserstein distance needs features of equal width, got {x.shape[1]} '
                     f'and {y.shape[1]}')
  sq = np.zeros((x.shape[0], y.shape[0]))
  for start in range(0, x.shape[1], _CHUNK):
    a = x[:, start:start + _CHUNK].astype(np.float64)
    b = y[:, start:start + _CHUNK].astype(np.float64)
    # (a - b)^2 expanded: exact up to rounding; clipped at 0 against cancellation.
    sq += (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T))
  return np.sqrt(np.maximum(sq, 0.0))


def wasserstein(x, y):
  """W1 between the empirical distributions of the rows of x and y (same n, same width)."""
  x, y = features.flat(x, 'x', min_examples=1), features.flat(y, 'y', min_examples=1)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'features of {x.shape[0]} and {y.shape[0]} examples: compare the same '
                     'number of examples in both models')
  cost = cross_distances(x, y)
  rows, cols = optimize.linear_sum_assignment(cost)
  return float(cost[rows, cols].mean())
