"""Feature maps [n, ...] of n examples as [n, d] matrices, the one shape check of the
similarity measures (similarity.py, rtd_metric.py, wasserstein.py)."""

import numpy as np


def flat(x, name, min_examples=2):
  """x [n, ...] -> [n, d]; a ValueError naming `name` when x has fewer than `min_examples`
  examples (or, for min_examples >= 2, fewer than 2 dimensions)."""
  x = np.asarray(x)
  if x.ndim < min(min_examples, 2) or x.shape[0] < min_examples:
    raise ValueError(f'{name} must be features [n, ...] of n >= {min_examples} examples, '
                     f'got shape {x.shape}')
  return x.reshape(x.shape[0], -1)
