"""BatchNorm over the batch and spatial axes with PyTorch's exact semantics.

Train mode normalises with the biased batch variance and updates the running
statistics as torch.nn.BatchNorm2d does (momentum 0.1 in torch terms):

  running_mean <- (1 - m) * running_mean + m * mean
  running_var  <- (1 - m) * running_var  + m * var * n / (n - 1)

with n the number of values per channel (batch x height x width): torch keeps the
UNBIASED variance in its running average, flax.linen.BatchNorm the biased one, so
the two drift apart. Eval mode normalises with the running statistics. With `mask` (float [N], 1 for a real
sample, 0 for padding) the batch statistics are those of the real samples only, so a
padded last batch normalises and updates exactly as the unpadded one would. Statistics
and normalisation are computed in float32 whatever the compute dtype (float64 when
`dtype` is float64); the output is cast to `dtype`. Means over the batch axis are taken with jnp.mean, so under
jax.jit with a batch sharded over devices they are global (no axis_name needed).

Variables: params 'scale' (torch 'weight', init 1) and 'bias' (init 0);
batch_stats 'mean' (torch 'running_mean', init 0) and 'var' ('running_var', init 1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def moments(x, axes):
  """Mean and biased variance of `x` over `axes`, two passes (the variance of x - mean)."""
  mean = jnp.mean(x, axis=axes)
  return mean, jnp.mean(jnp.square(x - mean), axis=axes)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d on NHWC (channels-last) inputs."""
  momentum: float = 0.1  # torch convention: weight of the new batch statistic
  epsilon: float = 1e-5
  dtype: Any = jnp.float32  # output dtype

  @nn.compact
  def __call__(self, x, use_running_average: bool, mask=None):
    features = x.shape[-1]
    f32 = jnp.float64 if jnp.dtype(self.dtype) == jnp.float64 else jnp.float32
    scale = self.param('scale', nn.initializers.ones, (features,), f32)
    bias = self.param('bias', nn.initializers.zeros, (features,), f32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), f32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), f32)

    xf = x.astype(f32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      per_sample = 1
      for a in axes[1:]:
        per_sample *= x.shape[a]
      if mask is None:
        n = x.shape[0] * per_sample
        if n < 2:
          raise ValueError(
              f'BatchNorm in train mode needs more than 1 value per channel, got '
              f'input shape {x.shape}; use a larger batch or train=False.')
        mean, var = moments(xf, axes)
      else:
        w = mask.astype(f32).reshape((-1,) + (1,) * (x.ndim - 1))
        n = jnp.sum(mask.astype(f32)) * per_sample
        safe = jnp.maximum(n, 1.0)
        mean = jnp.sum(xf * w, axis=axes) / safe
        var = jnp.sum(jnp.square(xf - mean) * w, axis=axes) / safe
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * (n / jnp.maximum(n - 1, 1))
        new_mean = (1.0 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
        new_var = (1.0 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
        if mask is not None:  # a micro-batch of padding only leaves the statistics alone
          new_mean = jnp.where(n > 1, new_mean, ra_mean.value)
          new_var = jnp.where(n > 1, new_var, ra_var.value)
        ra_mean.value, ra_var.value = new_mean, new_var
    y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype)
