"""Numerical helpers shared by the tests."""

import numpy as np


def central_differences(f, args, which, eps=1e-6):
  """d f(*args) / d args[which] by central differences, entry by entry (numpy arrays)."""
  x = args[which]
  out = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    moved = [a.copy() for a in args]
    moved[which][idx] += eps
    plus = float(f(*moved))
    moved[which][idx] -= 2 * eps
    out[idx] = (plus - float(f(*moved))) / (2 * eps)
  return out
