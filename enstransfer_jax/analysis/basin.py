"""Loss landscape between solutions: straight lines and the plane through three members.

Line from A to B: w(alpha) = (1 - alpha) w_A + alpha w_B for alpha = 0, 1/(p-1), ..., 1
(p = 11 points by default), parameters and BN statistics alike; with `recompute` given, the
BN statistics of every point are then recomputed on training data.

Plane through w1, w2, w3 (Garipov et al., 2018): orthonormal axes
  u = (w2 - w1) / |w2 - w1|,   v = (w3 - w1 - <w3 - w1, u> u) / |...|
(dot products over all parameters, float64), so the members sit at (0, 0), (|w2 - w1|, 0) and
(<w3 - w1, u>, |w3 - w1 - <w3 - w1, u> u|). The point (x, y) is the affine combination
  w1 + c2 (w2 - w1) + c3 (w3 - w1),  c3 = y / |v|,  c2 = (x - c3 <w3 - w1, u>) / |w2 - w1|,
applied to parameters and BN statistics; a grid x grid lattice covers the three members with
a `margin` (fraction of the larger extent) on every side.

`evaluate(variables) -> {'loss': ..., 'acc': ...}` is any scoring function.
"""

import jax
import numpy as np
from tqdm import tqdm

from enstransfer_jax.evaluator import combine


def alphas(points=11):
  if int(points) < 2:
    raise ValueError(f'an interpolation line needs at least 2 points, got {points}')
  return np.linspace(0.0, 1.0, int(points))


def line(evaluate, va, vb, points=11, *, recompute=None, known=None, progress=False, desc=''):
  """[{'alpha', 'loss', 'acc'}] along the segment from va to vb.

  known: {alpha: result} of points already scored (e.g. the end points), not evaluated again.
  """
  known = dict(known or {})
  rows = []
  for a in tqdm(alphas(points), desc=desc or 'line', leave=False, disable=not progress):
    a = float(a)
    if a in known:
      result = known[a]
    else:
      v = combine([va, vb], [1.0 - a, a])
      result = evaluate(recompute(v) if recompute else v)
    rows.append({'alpha': a, **result})
  return rows


def _dot(a, b):
  return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
                   for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def plane_basis(p1, p2, p3):
  """{'u', 'c', 'v'}: |w2 - w1|, <w3 - w1, u_hat> and the height of w3 above the w1-w2 axis."""
  d2 = jax.tree_util.tree_map(lambda a, b: np.asarray(b, np.float64) - a, p1, p2)
  d3 = jax.tree_util.tree_map(lambda a, b: np.asarray(b, np.float64) - a, p1, p3)
  u = np.sqrt(_dot(d2, d2))
  if u == 0:
    raise ValueError('members 1 and 2 have identical parameters: no plane through them')
  c = _dot(d3, d2) / u
  v = np.sqrt(max(_dot(d3, d3) - c * c, 0.0))
  if v <= 1e-12 * max(u, 1.0):
    raise ValueError('members 1, 2 and 3 lie on one line: no plane through them')
  return {'u': u, 'c': c, 'v': v}


def plane_coefficients(basis, x, y):
  """(c1, c2, c3) with the point (x, y) = c1 w1 + c2 w2 + c3 w3 (c1 + c2 + c3 = 1)."""
  c3 = y / basis['v']
  c2 = (x - c3 * basis['c']) / basis['u']
  return 1.0 - c2 - c3, c2, c3


def plane_grid(basis, grid=7, margin=0.2):
  """x and y coordinates of the lattice (each [grid]) covering the three members."""
  if int(grid) < 2:
    raise ValueError(f'the plane grid needs at least 2 points per side, got {grid}')
  xs = np.array([0.0, basis['u'], basis['c']])
  ys = np.array([0.0, 0.0, basis['v']])
  pad = margin * max(xs.max() - xs.min(), ys.max() - ys.min())
  return (np.linspace(xs.min() - pad, xs.max() + pad, int(grid)),
          np.linspace(ys.min() - pad, ys.max() + pad, int(grid)))


def plane(evaluate, v1, v2, v3, *, grid=7, margin=0.2, recompute=None, progress=False):
  """Scores on the grid of the plane through three members' variables.

  Returns {'x': [g], 'y': [g], 'loss': [g, g], 'acc': [g, g] (row = y, column = x),
  'members': [[x, y] of members 1..3], 'basis': plane_basis(...)}.
  """
  basis = plane_basis(v1['params'], v2['params'], v3['params'])
  xs, ys = plane_grid(basis, grid, margin)
  loss = np.zeros((len(ys), len(xs)))
  acc = np.zeros_like(loss)
  cells = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
  for i, j in tqdm(cells, desc='plane', leave=False, disable=not progress):
    v = combine([v1, v2, v3], plane_coefficients(basis, xs[j], ys[i]))
    result = evaluate(recompute(v) if recompute else v)
    loss[i, j], acc[i, j] = result['loss'], result['acc']
  members = [[0.0, 0.0], [basis['u'], 0.0], [basis['c'], basis['v']]]
  return {'x': xs, 'y': ys, 'loss': loss, 'acc': acc, 'members': members, 'basis': basis}
