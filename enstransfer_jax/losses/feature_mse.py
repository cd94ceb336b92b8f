"""Feature-map MSE: the mean squared difference of two feature batches.

The thesis's `fmap_loss_type="MSELoss"` regulariser, equal to torch.nn.MSELoss() with its
default mean reduction (mean over every element). The mean does not depend on the order
of the elements, so NHWC maps give the same value as the reference's NCHW maps.
"""

import jax.numpy as jnp


def feature_mse(reg_features, cur_features, weights=None):
  """Mean over all elements of (cur - reg)^2; both arrays must have the same shape.

  weights: optional [n] per-sample weights (0 for padding): the mean then runs over the
  elements of the samples with weight 1 only.
  """
  reg, cur = jnp.asarray(reg_features), jnp.asarray(cur_features)
  if reg.shape != cur.shape:
    raise ValueError(f'feature_mse needs feature maps of the same shape, got {reg.shape} '
                     f'and {cur.shape}.')
  if weights is None:
    return jnp.mean(jnp.square(cur - reg))
  w = jnp.asarray(weights, cur.dtype).reshape((-1,) + (1,) * (cur.ndim - 1))
  per_sample = cur[0].size
  return jnp.sum(jnp.square(cur - reg) * w) / jnp.maximum(jnp.sum(w) * per_sample, 1.0)
