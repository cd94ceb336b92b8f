"""Tests of the feature MSE, weight-orthogonality, previous-model CE and CE losses vs torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enstransfer_jax.losses import cross_entropy
from enstransfer_jax.losses import feature_mse
from enstransfer_jax.losses import flatten_params
from enstransfer_jax.losses import prev_ce
from enstransfer_jax.losses import weight_orthogonality

RNG = np.random.default_rng(0)


def _t(x):
  return torch.from_numpy(np.array(x))


def test_feature_mse_matches_torch():
  reg = RNG.normal(size=(4, 3, 5, 2)).astype(np.float32)
  cur = RNG.normal(size=(4, 3, 5, 2)).astype(np.float32)
  expected = torch.nn.MSELoss()(_t(cur), _t(reg)).item()
  np.testing.assert_allclose(feature_mse(reg, cur), expected, rtol=1e-6)
  grad = jax.grad(feature_mse, argnums=1)(reg, cur)
  np.testing.assert_allclose(grad, 2 * (cur - reg) / cur.size, rtol=1e-6)
  with pytest.raises(ValueError, match='same shape'):
    feature_mse(reg, cur[:3])


def test_cross_entropy_matches_torch():
  logits = RNG.normal(size=(7, 5)).astype(np.float32)
  labels = RNG.integers(0, 5, size=7)
  expected = torch.nn.CrossEntropyLoss()(_t(logits), _t(labels)).item()
  np.testing.assert_allclose(jax.jit(cross_entropy)(logits, labels), expected, rtol=1e-6)
  with pytest.raises(ValueError, match='integer labels'):
    cross_entropy(logits, labels[:3])
  with pytest.raises(ValueError, match='integer class labels'):
    cross_entropy(logits, labels.astype(np.float32))


def _params():
  return {'conv1': {'kernel': RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)},
          'bn1': {'scale': RNG.normal(size=(4,)).astype(np.float32),
                  'bias': RNG.normal(size=(4,)).astype(np.float32)},
          'fc': {'kernel': RNG.normal(size=(4, 6)).astype(np.float32),
                 'bias': RNG.normal(size=(6,)).astype(np.float32)}}


def test_flatten_params_uses_tree_leaves_order():
  params = _params()
  flat = flatten_params(params)
  # tree_leaves sorts keys: bn1/bias, bn1/scale, conv1/kernel, fc/bias, fc/kernel.
  expected = np.concatenate([params['bn1']['bias'], params['bn1']['scale'],
                             params['conv1']['kernel'].ravel(), params['fc']['bias'],
                             params['fc']['kernel'].ravel()])
  np.testing.assert_array_equal(flat, expected)
  with pytest.raises(ValueError, match='empty'):
    flatten_params({})


def test_weight_orthogonality_matches_torch_with_gradient():
  params, other = _params(), _params()
  v = np.asarray(flatten_params(other))
  w = torch.tensor(np.asarray(flatten_params(params)), requires_grad=True)
  cos2 = torch.cosine_similarity(w, _t(v), dim=0) ** 2
  cos2.backward()
  value, grads = jax.value_and_grad(weight_orthogonality)(params, v)
  np.testing.assert_allclose(value, cos2.item(), rtol=1e-5)
  np.testing.assert_allclose(flatten_params(grads), w.grad.numpy(), rtol=1e-4, atol=1e-7)
  # Orthogonal and parallel vectors: 0 and 1; a zero vector: 0 (not NaN).
  np.testing.assert_allclose(weight_orthogonality({'a': jnp.array([1., 0.])}, [0., 3.]), 0.0)
  np.testing.assert_allclose(weight_orthogonality({'a': jnp.array([1., 2.])}, [-2., -4.]), 1.0,
                             rtol=1e-6)
  assert float(weight_orthogonality({'a': jnp.zeros(2)}, [1., 1.])) == 0.0
  with pytest.raises(ValueError, match='flat vector'):
    weight_orthogonality(params, v[:-1])


def _torch_prev_ce(logits, prev_logits, labels, only_negative):
  targets = _t(prev_logits).argmax(-1)
  logits = _t(logits).requires_grad_(True)
  if only_negative:
    mask = _t(labels) != targets
    loss = F.cross_entropy(logits[mask], targets[mask])
  else:
    loss = F.cross_entropy(logits, targets)
  loss.backward()
  return loss.item(), logits.grad.numpy()


@pytest.mark.parametrize('only_negative', [False, True])
def test_prev_ce_matches_torch(only_negative):
  logits = RNG.normal(size=(12, 4)).astype(np.float32)
  prev_logits = RNG.normal(size=(12, 4)).astype(np.float32)
  labels = RNG.integers(0, 4, size=12)
  labels[:3] = prev_logits[:3].argmax(-1)  # some right, some wrong
  expected, expected_grad = _torch_prev_ce(logits, prev_logits, labels, only_negative)
  fn = jax.jit(jax.value_and_grad(prev_ce), static_argnames='only_negative')
  value, grad = fn(logits, prev_logits, labels, only_negative=only_negative)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_prev_ce_only_negative_with_no_wrong_samples_is_zero():
  logits = RNG.normal(size=(5, 3)).astype(np.float32)
  prev_logits = RNG.normal(size=(5, 3)).astype(np.float32)
  labels = prev_logits.argmax(-1)
  assert np.isnan(_torch_prev_ce(logits, prev_logits, labels, True)[0])  # the reference
  value, grad = jax.value_and_grad(prev_ce)(logits, prev_logits, labels, only_negative=True)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_prev_ce_bad_shapes():
  logits = RNG.normal(size=(5, 3)).astype(np.float32)
  with pytest.raises(ValueError, match='same shape'):
    prev_ce(logits, logits[:4], np.zeros(5, np.int32))
  with pytest.raises(ValueError, match='labels of shape'):
    prev_ce(logits, logits, np.zeros(4, np.int32), only_negative=True)
