"""ResNet(remat=True) (config.remat): each residual block rematerialised, same results.

Reference: the same model without remat. In float64, loss, every gradient and the updated
BatchNorm running statistics of a train-mode step agree to 1e-10 relative (1e-12 absolute) (the recomputation repeats the same operations; XLA may fuse them differently: in float32
that reorders rounding by ~1e-5 through the BatchNorms of a tiny model), and the gradient's
program holds one checkpointed region per residual block (none without remat).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enstransfer_jax import models
from enstransfer_jax.models import resnet


def _loss_and_grads(model, variables, x, y, mask):
  def loss_fn(params):
    (logits, feats), new = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                       x, train=True, mask=mask, mutable=['batch_stats'])
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    loss = jnp.sum(ce * mask) / jnp.sum(mask) + 1e-3 * jnp.mean(feats[0] ** 2)
    return loss, new['batch_stats']
  return jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])


def _count_remat(closed_jaxpr):
  """Rematerialised regions (jax.checkpoint, printed 'remat') in a program, nested ones too."""
  return len(re.findall(r'\bremat\w*\[', str(closed_jaxpr)))


def test_remat_same_loss_gradients_and_statistics():
  # ResNet-50's bottleneck blocks, one stage of two: one with the projection shortcut, one
  # without (the wrapping is the same in every stage and for basic blocks; few blocks keep
  # the two compiles short).
  make = lambda remat: resnet.ResNet('bottleneck', (2,), 5, width=2,
                                     dtype=jnp.float64, remat=remat)
  plain, remat = make(False), make(True)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float64)
    y = jnp.asarray(rng.integers(0, 5, 6), jnp.int32)
    mask = jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float64)  # a padded row, as the engine's batches
    # Random values in the init's shapes (the init itself compiles slowly); positive variances.
    shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(0), x[:1])
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if 'var' in str(path[-1])
                                    else rng.normal(0, 0.5, s.shape), jnp.float64), shapes)
    out0 = jax.jit(lambda v: _loss_and_grads(plain, v, x, y, mask))(variables)
    out1 = jax.jit(lambda v: _loss_and_grads(remat, v, x, y, mask))(variables)
    jaxpr = lambda m: jax.make_jaxpr(lambda v: _loss_and_grads(m, v, x, y, mask))(variables)
    counts = _count_remat(jaxpr(plain)), _count_remat(jaxpr(remat))
  assert jax.tree.structure(out0) == jax.tree.structure(out1)
  for a, b in zip(jax.tree.leaves(out0), jax.tree.leaves(out1)):
    assert a.dtype == np.float64
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)
  assert np.median([np.abs(a).max() for a in jax.tree.leaves(out0[1])]) > 1e-3
  assert counts == (0, 2)


def test_remat_is_for_resnets_only():
  assert models.create_model('ResNet18', 5, width=2, remat=True).remat
  with pytest.raises(ValueError, match='ResNets only'):
    models.create_model('SwinNano', 5, image_size=32, remat=True)
