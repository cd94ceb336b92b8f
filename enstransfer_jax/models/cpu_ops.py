"""The ResNets' convolution and max-pool, with lowerings that XLA's CPU backend runs fast.

  Conv2d(features, kernel_size, stride, pad, dtype=..., param_dtype=..., name='conv1')(x)
  max_pool(x, window=3, stride=2, pad=1)

Conv2d has the parameters and arithmetic of flax.linen.Conv with symmetric explicit padding and
no bias: one param 'kernel' [kh, kw, in, out] (HWIO, same initialisation), inputs and kernel
cast to `dtype`. Lowerings of the same convolution:

  'xla'     jax.lax.conv_general_dilated, as flax.linen.Conv.
  'im2col'  the input zero-padded, its kh x kw shifted (strided) views concatenated on the
            channel axis into patches [N, OH, OW, kh * kw * in], then one matrix product with
            the kernel reshaped to [kh * kw * in, out]. Its derivatives are matrix products,
            slices and pads, so the forward pass and both gradients run as matrix products.
            Kernel taps that only ever read padding (a 3x3 kernel on a 1x1 map reads 8 taps of
            zeros) are left out: their terms are exact zeros, and their gradient is exactly 0,
            as in the direct convolution.
  'cpu'     per convolution: 'im2col' for convolutions with at least MIN_CHANNELS input and
            output channels whose kernel is 1x1 or whose input is at most SMALL_MAP x SMALL_MAP
            pixels, 'xla' otherwise (the stem and the 8x8 maps of a 32 px ResNet, where XLA's
            own convolution is the faster one, and narrow convolutions, where the slower
            compilation of the im2col program costs more than its faster steps save).
  'auto'    'cpu' when JAX's default backend is the CPU with one device, else 'xla' (the
            default).

Why: on maps of 4x4 pixels and smaller (layer2 to layer4 of a ResNet at 32 px) XLA's CPU
backend swaps the operands of the convolutions and copies reversed kernels; it ran them 2x (4x4)
to over 10x (2x2, 1x1) slower than the matrix products, and the whole train step at width 64 was
4-5x slower than PyTorch's on the same CPU (BENCHMARKS.md, "Train step on the CPU against
PyTorch").

max_pool is flax.linen.max_pool padded with -inf. On the CPU (from MIN_CHANNELS channels) it is
the maximum of the window's
strided views, and its gradient goes to the first maximal element of each window in row-major
order (as XLA's select-and-scatter and torch's max_pool2d choose), written as a sum of selects
so that the vmapped step needs no select-and-scatter: XLA's CPU backend runs that one as a
reduction carrying one index array per dimension.

The environment variable ENSTRANSFER_CONV=xla|im2col|cpu overrides 'auto' (for benchmarks and
comparisons); it is read when a model is traced. All lowerings agree to rounding (float64: to
1e-10, tests/test_cpu_ops.py).
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LOWERINGS = ('auto', 'xla', 'im2col', 'cpu')
ENV = 'ENSTRANSFER_CONV'
SMALL_MAP = 4  # 'cpu': im2col on inputs of at most SMALL_MAP x SMALL_MAP pixels ...
MIN_CHANNELS = 32  # ... with at least this many channels (max_pool: views from this many)


def resolve(lowering: str = 'auto') -> str:
  """'xla', 'im2col' or 'cpu' for a `lowering` of LOWERINGS (see the module docstring)."""
  if lowering not in LOWERINGS:
    raise ValueError(f'unknown convolution lowering {lowering!r}; use one of {LOWERINGS}')
  if lowering != 'auto':
    return lowering
  forced = os.environ.get(ENV, '')
  if forced:
    if forced not in LOWERINGS[1:]:
      raise ValueError(f'{ENV}={forced!r} is not a convolution lowering; set it to one of '
                       f'{", ".join(LOWERINGS[1:])}, or unset it')
    return forced
  # One CPU device only: on a mesh of forced host devices (data-parallel runs and their tests)
  # float32 losses under 'cpu' drifted 1.7e-5 from the one-device run in four steps where XLA's
  # own convolution keeps 5e-7 (float64 agrees to 4e-16 either way: rounding, not arithmetic).
  return 'cpu' if jax.default_backend() == 'cpu' and jax.device_count() == 1 else 'xla'


def _live_taps(size, kernel, stride, pad, out):
  """Kernel offsets (along one axis) whose strided view reads at least one real pixel."""
  return [k for k in range(kernel) if k + stride * (out - 1) >= pad and k < pad + size]


def conv_im2col(x, kernel, stride: int, pad: int):
  """The 'im2col' lowering: x [N, H, W, C] (NHWC), kernel [kh, kw, C, O] (HWIO), symmetric
  zero padding `pad` and stride `stride` on both spatial axes -> [N, OH, OW, O]."""
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
  rows, cols = _live_taps(h, kh, stride, pad, oh), _live_taps(w, kw, stride, pad, ow)
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  views = [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
           for i in rows for j in cols]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  k = kernel[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # the live taps are contiguous
  k = k.reshape(len(rows) * len(cols) * cin, cout)
  out = jax.lax.dot_general(patches.reshape(n * oh * ow, -1), k, (((1,), (0,)), ((), ())))
  return out.reshape(n, oh, ow, cout)


def conv_xla(x, kernel, stride: int, pad: int):
  """The 'xla' lowering: flax.linen.Conv's call of lax.conv_general_dilated."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv(x, kernel, stride: int, pad: int, lowering: str = 'auto'):
  """The convolution under `lowering` (LOWERINGS)."""
  how = resolve(lowering)
  if how == 'cpu':
    small = x.shape[1] <= SMALL_MAP and x.shape[2] <= SMALL_MAP
    wide = min(kernel.shape[2:]) >= MIN_CHANNELS
    how = 'im2col' if wide and (small or kernel.shape[:2] == (1, 1)) else 'xla'
  fn = conv_im2col if how == 'im2col' else conv_xla
  return fn(x, kernel, stride, pad)


class Conv2d(nn.Module):
  """A square-kernel, bias-free 2-D convolution on NHWC inputs; see the module docstring."""
  features: int
  kernel_size: int
  stride: int = 1
  pad: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  lowering: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.pad,
                self.lowering)


def max_pool_views(x, window: int, stride: int, pad: int):
  """max_pool of NHWC `x` (-inf padding) as selects over the window's strided views."""
  n, h, w, c = x.shape
  oh, ow = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  views = [xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
           for i in range(window) for j in range(window)]
  top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, views))
  out, taken = jnp.zeros_like(top), jnp.zeros(top.shape, bool)
  for v in views:  # the first maximal element of the window takes the gradient
    first = (jax.lax.stop_gradient(v) == top) & ~taken
    taken = taken | first
    out = out + jnp.where(first, v, 0.0)
  return jnp.where(taken, out, top)  # a NaN in the window: NaN, as the maximum


def max_pool(x, window: int = 3, stride: int = 2, pad: int = 1, lowering: str = 'auto'):
  """flax.linen.max_pool(x, (window,) * 2, (stride,) * 2, ((pad, pad),) * 2) of NHWC `x`; as
  max_pool_views under 'im2col', and under 'cpu' from MIN_CHANNELS channels."""
  how = resolve(lowering)
  if how == 'xla' or (how == 'cpu' and x.shape[-1] < MIN_CHANNELS):
    return nn.max_pool(x, (window, window), (stride, stride), ((pad, pad), (pad, pad)))
  return max_pool_views(x, window, stride, pad)
