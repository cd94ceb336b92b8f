"""models/cpu_ops.py: the im2col convolution against torch's conv2d and XLA's convolution, forward
and both gradients, float64 (and float32 to rounding); the max-pool of strided views against
torch's max_pool2d (ties included); parameters identical to flax.linen.Conv's. (The whole
ResNet on the CPU's default lowering against torch: tests/test_models.py, the golden
trajectories.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from enstransfer_jax.models import cpu_ops as conv_lib

# (N, H, in, out, kernel, stride, pad): the ResNets' cases at 32 px and smaller maps, where
# some kernel taps only see padding (1x1 and 2x2 maps, 7x7 stem on a 4x4 map)
CASES = [(2, 9, 3, 4, 7, 2, 3), (2, 4, 3, 4, 7, 2, 3), (3, 4, 5, 6, 3, 1, 1),
         (3, 2, 5, 6, 3, 2, 1), (2, 1, 4, 5, 3, 1, 1), (2, 3, 4, 6, 1, 2, 0)]


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('h', [8, 1])
def test_max_pool_views_matches_torch_float64(x64, h):
  rng = np.random.default_rng(h)
  x = rng.standard_normal((2, h, h, 3))
  x[0, :3, :3, 0] = 0.5  # ties: the first maximum of each window takes the gradient
  x[1, :, :, 1] = 0.0
  oh = (h + 2 - 3) // 2 + 1
  dy = rng.standard_normal((2, oh, oh, 3))
  pool = lambda a: conv_lib.max_pool_views(a, 3, 2, 1)
  y, gx = jax.jit(lambda a, d: (pool(a), jax.vjp(pool, a)[1](d)[0]))(x, dy)
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  ty = torch.nn.functional.max_pool2d(tx, 3, 2, 1)
  (ty * torch.tensor(dy.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_array_equal(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize('n,h,cin,cout,k,stride,pad', CASES)
def test_im2col_matches_torch_conv2d_float64(x64, n, h, cin, cout, k, stride, pad):
  rng = np.random.default_rng(h * 100 + k)
  x = rng.standard_normal((n, h, h, cin))
  w = rng.standard_normal((k, k, cin, cout))
  oh = (h + 2 * pad - k) // stride + 1
  dy = rng.standard_normal((n, oh, oh, cout))

  def value_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b, stride, pad) * dy),
                                      (0, 1)))(x, w)
  y = jax.jit(conv_lib.conv_im2col, static_argnums=(2, 3))(x, w, stride, pad)
  _, (gx, gw) = value_and_grads(conv_lib.conv_im2col)

  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)
  (ty * torch.tensor(dy.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1),
                             rtol=0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy().transpose(2, 3, 1, 0),
                             rtol=0, atol=1e-10)
  # XLA's own convolution (the 'xla' lowering) agrees too
  _, (gx2, gw2) = value_and_grads(conv_lib.conv_xla)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(gw2), rtol=0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(gx2), rtol=0, atol=1e-10)


@pytest.mark.parametrize('n,h,cin,cout,k,stride,pad', CASES[1:5])
def test_im2col_equals_xla_convolution_float32(n, h, cin, cout, k, stride, pad):
  """float32: the two lowerings agree to rounding, forward and both gradients."""
  rng = np.random.default_rng(h * 10 + k)
  x = rng.standard_normal((n, h, h, cin), np.float32)
  w = rng.standard_normal((k, k, cin, cout), np.float32)

  def run(fn):
    y, vjp = jax.vjp(lambda a, b: fn(a, b, stride, pad), x, w)
    return (y,) + vjp(jnp.ones_like(y) + y)
  for got, want in zip(jax.jit(lambda: run(conv_lib.conv_im2col))(),
                       jax.jit(lambda: run(conv_lib.conv_xla))()):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


def test_params_equal_flax_conv():
  x = jnp.ones((1, 5, 5, 3))
  ours = conv_lib.Conv2d(4, 3, 2, 1, kernel_init=nn.initializers.lecun_normal(), name='c')
  flax_conv = nn.Conv(4, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False, name='c')
  p1 = ours.init(jax.random.PRNGKey(3), x)
  p2 = flax_conv.init(jax.random.PRNGKey(3), x)
  np.testing.assert_array_equal(p1['params']['kernel'], p2['params']['kernel'])
  np.testing.assert_allclose(ours.apply(p1, x), flax_conv.apply(p2, x), rtol=1e-6, atol=1e-6)
  # the 'xla' lowering (the GPU's) is flax.linen.Conv's program, exactly
  xla = conv_lib.Conv2d(4, 3, 2, 1, kernel_init=nn.initializers.lecun_normal(), lowering='xla',
                        name='c')
  lower = lambda m: jax.jit(m.apply).lower(p2, x).as_text(debug_info=False)
  assert lower(xla) == lower(flax_conv)


def test_lowering_choice(monkeypatch):
  monkeypatch.delenv(conv_lib.ENV, raising=False)
  one_cpu = jax.default_backend() == 'cpu' and jax.device_count() == 1
  assert conv_lib.resolve() == ('cpu' if one_cpu else 'xla')
  assert conv_lib.resolve('xla') == 'xla'
  # 'cpu': matrix products on maps of at most SMALL_MAP pixels and for 1x1 kernels, from
  # MIN_CHANNELS channels
  c = conv_lib.MIN_CHANNELS
  prims = lambda h, k, c: {e.primitive.name for e in jax.make_jaxpr(
      lambda x, w: conv_lib.conv(x, w, 1, k // 2, 'cpu'))(
          jnp.ones((1, h, h, c)), jnp.ones((k, k, c, c))).eqns}
  assert 'dot_general' in prims(conv_lib.SMALL_MAP, 3, c)
  assert 'conv_general_dilated' in prims(conv_lib.SMALL_MAP + 1, 3, c)
  assert 'dot_general' in prims(8, 1, c)
  assert 'conv_general_dilated' in prims(conv_lib.SMALL_MAP, 3, c - 1)
  monkeypatch.setenv(conv_lib.ENV, 'xla')
  assert conv_lib.resolve() == 'xla'
  monkeypatch.setenv(conv_lib.ENV, 'fast')
  with pytest.raises(ValueError, match='ENSTRANSFER_CONV=.fast. is not a convolution lowering'):
    conv_lib.resolve()
  with pytest.raises(ValueError, match='unknown convolution lowering'):
    conv_lib.resolve('cudnn')
