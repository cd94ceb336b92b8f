"""RTD-Lite loss between two feature batches, computed on the device.

RTD-Lite (Tulchinskii et al., AISTATS 2025, arXiv 2503.11910) replaces the H1 cross-barcode
of RTD by minimum spanning trees. With A and B the normalised distance matrices of the
regulariser's and the current features on the same n samples and C = min(A, B),

  loss = 0.5 * ((MST(A) - MST(C)) + (MST(B) - MST(C))) = 0.5 * (MST(A) + MST(B)) - MST(C),

MST(X) the total weight of a minimum spanning tree of the complete graph weighted by X.
Both brackets are >= 0 (C <= A, C <= B entrywise) and the loss is 0 when A = B. It is the
summed length of the RTD-Lite barcode (enstransfer_jax/analysis/rtd_lite.py).

Normalisation: 'sqrt_dim' divides the Euclidean distances by sqrt(d) as rtd_loss does;
'quantile' divides each matrix by its `quantile`-quantile over all n^2 entries (diagonal
included, linear interpolation), as RTD-Lite's code does (the quantile is differentiated
through, as there); a matrix whose quantile is 0 (all points equal) is left as it is.

The spanning trees are found under stop_gradient by Boruvka's algorithm written with dense
[n, n] array operations: ceil(log2 n) rounds, in each every component picks its lightest
outgoing edge and the picks are merged by pointer jumping; edges are ordered by (weight,
lower endpoint, higher endpoint), so ties are broken deterministically and the picks never
form a cycle. The loss then gathers the distances of the chosen edges, so its gradient is
an exact subgradient (the gradient wherever no two candidate edges tie). O(n^2) work per
round and no host callback: it runs under jit, vmap, lax.scan and sharded meshes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax.losses import rtd
from enstransfer_jax.losses.rtd import pairwise_distances

NORMALIZATIONS = ('sqrt_dim', 'quantile')


def _boruvka_mask(w):
  """Bool [n, n]: the upper-triangle (u < v) edges of a minimum spanning tree of w [n, n]."""
  n = w.shape[-1]
  idx = jnp.arange(n, dtype=jnp.int32)
  lo, hi = jnp.minimum(idx[:, None], idx[None, :]), jnp.maximum(idx[:, None], idx[None, :])
  key = lo * n + hi  # edge id; the second key of the order, after the weight
  big = jnp.int32(n * n)
  inf = jnp.array(jnp.inf, w.dtype)
  steps = max(1, math.ceil(math.log2(n)))  # components at least halve every round

  def round_(_, carry):
    comp, tree = carry  # component label of every vertex (its root's index); edges so far
    outside = comp[:, None] != comp[None, :]
    wv = jnp.where(outside, w, inf)
    best_w = jnp.min(wv, axis=1)  # lightest outgoing edge of every vertex
    best_e = jnp.min(jnp.where(outside & (wv == best_w[:, None]), key, big), axis=1)
    same = ~outside
    comp_w = jnp.min(jnp.where(same, best_w[None, :], inf), axis=1)  # ... of its component
    comp_e = jnp.min(jnp.where(same & (best_w[None, :] == comp_w[:, None]), best_e[None, :],
                               big), axis=1)
    valid = comp_e < big
    u, v = jnp.where(valid, comp_e // n, 0), jnp.where(valid, comp_e % n, 0)
    tree = tree.at[u, v].max(valid)
    # The component each component's pick leads to; mutual picks (2-cycles) keep the lower.
    target = jnp.where(valid, jnp.where(comp[u] == comp, comp[v], comp[u]), comp)
    parent = target[comp]  # per vertex; read at a root r (comp[r] = r) it is r's target
    parent = jnp.where((parent[parent] == idx) & (idx < parent), idx, parent)
    for _ in range(steps):  # pointer jumping to the roots
      parent = parent[parent]
    return parent[comp], tree

  return jax.lax.fori_loop(0, steps, round_, (idx, jnp.zeros((n, n), bool)))[1]


@jax.jit
def _batched_mask(dm):
  fn = _boruvka_mask
  for _ in range(dm.ndim - 2):
    fn = jax.vmap(fn)
  return fn(dm)


def mst_mask(dm):
  """Bool [..., n, n]: the edges (u < v) of a minimum spanning tree of symmetric dm [..., n, n].

  No gradient; ties are broken by the lowest (u, v). Leading axes are batched.
  """
  dm = jax.lax.stop_gradient(jnp.asarray(dm))
  if dm.shape[-1] < 2:
    return jnp.zeros(dm.shape, bool)
  return _batched_mask(dm)


def mst_weight(dm):
  """Total weight of a minimum spanning tree of the complete graph weighted by dm [..., n, n].

  dm must be symmetric and finite (the diagonal is ignored). Differentiable: the gradient is
  1 on the tree's edges (u < v), 0 elsewhere.
  """
  dm = jnp.asarray(dm)
  return jnp.sum(jnp.where(mst_mask(dm), dm, 0.0), axis=(-2, -1))


def _normalized(x, normalize, quantile):
  d = pairwise_distances(x)
  if normalize == 'sqrt_dim':
    return d / np.sqrt(x.shape[1])
  q = jnp.quantile(d, quantile)
  return d / jnp.where(q > 0, q, 1.0)


def _validate(reg, cur, normalize, quantile):
  rtd.check_feature_pair('rtd_lite_loss', reg, cur)
  if normalize not in NORMALIZATIONS:
    raise ValueError(f'rtd_lite_loss normalize must be one of {NORMALIZATIONS}, got '
                     f'{normalize!r}.')
  if not 0.0 < quantile <= 1.0:
    raise ValueError(f'rtd_lite_loss quantile must be in (0, 1], got {quantile!r}.')


@functools.partial(jax.jit, static_argnames=('normalize', 'quantile'))
def _rtd_lite(reg, cur, *, normalize, quantile):
  dtype = jnp.result_type(reg.dtype, cur.dtype, jnp.float32)
  a = _normalized(reg.astype(dtype), normalize, quantile)
  b = _normalized(cur.astype(dtype), normalize, quantile)
  c = jnp.minimum(a, b)
  mst_a, mst_b, mst_c = mst_weight(jnp.stack([a, b, c]))
  loss = 0.5 * ((mst_a - mst_c) + (mst_b - mst_c))
  return loss, {'mst_reg': mst_a, 'mst_cur': mst_b, 'mst_min': mst_c}


def rtd_lite_loss(reg_features, cur_features, *, normalize='sqrt_dim', quantile=0.9,
                  return_aux=False):
  """RTD-Lite loss between regulariser features and current features.

  Args:
    reg_features: [n, d] (or [n, ...], flattened) features of the regulariser.
    cur_features: [n, d'] (or [n, ...]) features of the current model.
    normalize: 'sqrt_dim' (distances / sqrt(d), as rtd_loss) or 'quantile' (distances /
      their `quantile`-quantile, as RTD-Lite's code).
    quantile: the quantile level used by normalize='quantile'.
    return_aux: also return {'mst_reg', 'mst_cur', 'mst_min'}: MST(A), MST(B), MST(C).

  Returns:
    The scalar loss, or (loss, aux) with return_aux.
  """
  reg, cur = jnp.asarray(reg_features), jnp.asarray(cur_features)
  _validate(reg, cur, normalize, quantile)
  loss, aux = _rtd_lite(reg.reshape(reg.shape[0], -1), cur.reshape(cur.shape[0], -1),
                        normalize=normalize, quantile=float(quantile))
  return (loss, aux) if return_aux else loss
