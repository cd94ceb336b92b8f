"""Weight orthogonalisation: cos^2 between the current parameters and an earlier member's.

weight_orthogonality(params, v) = (w . v)^2 / (|w|^2 |v|^2), with w = flatten_params(params)
and v a flat vector of an earlier member built the same way. The thesis adds
wo_beta * cos^2(w, v) to push a new member's weights towards orthogonality to the saved
members (other than member 1).

Leaf order: flatten_params concatenates the raveled leaves in jax.tree_util.tree_leaves
order (keys sorted, depth first). This differs from PyTorch's model.parameters() order,
but cos^2 is unchanged when both vectors are permuted the same way, so only that w and v
use the same order matters. Pass the `params` collection only (not batch_stats): the
reference used model.parameters(), which excludes BN running statistics.

The reference built w from p.data (detached), so its WO term never produced a gradient and
the regulariser had no effect on training. The function here is differentiable in params;
the engine passes stop_gradient(params) unless config.wo_gradient is True (the intended
method), so by default its runs equal the reference's. A zero vector gives 0 (the reference
would give NaN).
"""

import jax
import jax.numpy as jnp


def flatten_params(params):
  """One flat vector of all leaves of the params pytree, in tree_leaves order."""
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves:
    raise ValueError('flatten_params got an empty params pytree; pass the model params.')
  return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


def weight_orthogonality(params, other_flat):
  """cos^2(flatten_params(params), other_flat); differentiable in params."""
  w = flatten_params(params)
  v = jax.lax.stop_gradient(jnp.asarray(other_flat, w.dtype))
  if v.shape != w.shape:
    raise ValueError(f'weight_orthogonality needs a flat vector of {w.shape[0]} parameters '
                     f'(flatten_params of the same model), got shape {v.shape}.')
  dot = jnp.sum(w * v)
  denom = jnp.sum(w * w) * jnp.sum(v * v)
  positive = denom > 0
  return jnp.where(positive, dot * dot / jnp.where(positive, denom, 1.0), 0.0)
