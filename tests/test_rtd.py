"""Tests of the RTD loss against ripser.py, closed-form barcodes and finite differences."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import ripser
from scipy.spatial.distance import cdist

from enstransfer_jax.losses import pairwise_distances
from enstransfer_jax.losses import persistence_pairs
from enstransfer_jax.losses import rtd
from enstransfer_jax.losses import rtd_loss
from tests import numeric


def _clouds(n=12, d=5, seed=0, noise=0.4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x + noise * rng.normal(size=(n, d))
  return x, y


def _block(off, low):
  return np.block([[np.zeros_like(off), off.T], [off, low]])


def _reference_terms(a, b):
  """(side, filtration, births, deaths) as written in the reference's fmap_loss.py."""
  mn, mx = np.minimum(a, b), np.maximum(a, b)
  minimum = [('xz', _block(a, mn), _block(a, mn), _block(a, b)),
             ('zx', _block(b, mn), _block(b, mn), _block(b, b))]
  maximum = [('xz', _block(mx, b), _block(b, b), _block(mx, b)),
             ('zx', _block(mx, a), _block(b, a), _block(mx, a))]
  return minimum, maximum


def _ripser_h(dm, k=1):
  dgm = ripser.ripser(dm, maxdim=k, distance_matrix=True)['dgms'][k]
  dgm = dgm[np.isfinite(dgm[:, 1])]
  return dgm[dgm[:, 1] - dgm[:, 0] > 1e-6]


def _gathered(dm, idx):
  pairs = np.stack([dm[idx[:, 0], idx[:, 1]], dm[idx[:, 2], idx[:, 3]]], axis=1)
  return pairs[pairs[:, 1] - pairs[:, 0] > 1e-6]


def _sorted_rows(p):
  return p[np.lexsort((p[:, 1], p[:, 0]))]


def test_pairwise_distances_match_scipy_with_finite_gradient():
  x, _ = _clouds(n=10, d=7)
  x[3] = x[5]  # a duplicate row: zero distance off the diagonal
  np.testing.assert_allclose(pairwise_distances(jnp.asarray(x, jnp.float32)), cdist(x, x),
                             rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(pairwise_distances(z))))(jnp.asarray(x, jnp.float32))
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('points, birth, death', [
    (np.array([[0., 0.], [1., 0.], [1., 1.], [0., 1.]]), 1.0, np.sqrt(2.0)),
    (np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1),
     1.0, np.sqrt(3.0)),
])
def test_persistence_pairs_closed_form_polygons(points, birth, death):
  # The Vietoris-Rips H1 of a unit square is [1, sqrt 2); of a unit hexagon [1, sqrt 3).
  dm = cdist(points, points)
  idx = persistence_pairs(dm, dim=1, card=3)[0]
  np.testing.assert_allclose(dm[idx[0, 0], idx[0, 1]], birth, rtol=1e-6)
  np.testing.assert_allclose(dm[idx[0, 2], idx[0, 3]], death, rtol=1e-6)
  np.testing.assert_array_equal(idx[1:], 0)  # padding


def test_persistence_pairs_match_ripser_py_on_rtd_filtrations():
  x, y = _clouds(n=14, d=6, seed=1)
  a, b = cdist(x, x) / np.sqrt(6), cdist(y, y) / np.sqrt(6)
  minimum, maximum = _reference_terms(a, b)
  for _, filt, _, _ in minimum + maximum:
    expected = _ripser_h(filt)
    got = _gathered(filt, persistence_pairs(filt, dim=1, card=200)[0])
    assert len(got) == len(expected)
    np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(expected), rtol=1e-5)
    # card keeps the most persistent pairs, in decreasing order.
    top = _gathered(filt, persistence_pairs(filt, dim=1, card=3)[0])
    np.testing.assert_allclose(top[:, 1] - top[:, 0],
                               np.sort(expected[:, 1] - expected[:, 0])[::-1][:3], rtol=1e-5)


def test_persistence_pairs_match_ripser_py_on_low_rank_features():
  # Low-rank ReLU features: the case where a multi-threaded giotto-ph returned generators
  # inconsistent with its own diagram.
  rng = np.random.default_rng(10)
  z, w = rng.normal(size=(48, 8)), rng.normal(size=(8, 64))
  x, y = np.maximum(z @ w, 0), np.maximum((z + 0.3 * rng.normal(size=z.shape)) @ w, 0)
  a, b = cdist(x, x) / 8, cdist(y, y) / 8
  filt = _block(b, np.minimum(a, b))
  expected = _ripser_h(filt)
  for _ in range(3):
    got = _gathered(filt, persistence_pairs(filt, dim=1, card=500)[0])
    assert len(got) == len(expected) > 10
    np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(expected), rtol=1e-5)


def test_persistence_pairs_dimension_two_match_ripser_py():
  x, y = _clouds(n=7, d=4, seed=2)
  filt = _block(cdist(x, x), np.minimum(cdist(x, x), cdist(y, y)))
  idx = persistence_pairs(filt, dim=2, card=100)
  for k in (1, 2):
    got, expected = _gathered(filt, idx[k - 1]), _ripser_h(filt, k)
    assert len(got) == len(expected)
    np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(expected), rtol=1e-5)


def test_rtd_of_a_cloud_with_itself_is_zero():
  x, _ = _clouds(n=16, d=8)
  for mode in ('minimum', 'minmax'):
    assert float(rtd_loss(x, x, mode=mode)) == 0.0


@pytest.mark.parametrize('card', [50, 3])
def test_rtd_closed_form_simplex_against_hexagon(card):
  # reg: 6 points at pairwise distance L (a regular simplex); cur: a hexagon of side s.
  # M = [[0, A], [A, B]] (B <= A so M' = M) has H1 bars: 5 x [s, L) and [s, s sqrt 3);
  # rtd(B, A) is 0, and the 'maximum' terms repeat rtd(A, B) and add 0.
  big, s = 3.0, 1.0
  reg = big / np.sqrt(2.0) * np.sqrt(6.0) * np.eye(6)
  angles = np.arange(6) * np.pi / 3
  cur = s * np.sqrt(2.0) * np.stack([np.cos(angles), np.sin(angles)], 1)
  bars = np.array([big - s] * 5 + [(np.sqrt(3.0) - 1) * s])[:card]
  np.testing.assert_allclose(rtd_loss(reg, cur, card=card), bars.sum() / 2, rtol=1e-5)
  np.testing.assert_allclose(rtd_loss(reg, cur, card=card, mode='minmax'), bars.sum(),
                             rtol=1e-5)


def test_rtd_equals_ripser_persistence_when_second_matrix_is_the_filtration():
  # With cur = c * reg (c < 1), B = cA <= A, so M = M' = [[0, A], [A, B]] and
  # rtd(B, A) = 0: the loss is half the summed top-card H1 persistence of M.
  x, _ = _clouds(n=14, d=6, seed=3)
  a = cdist(x, x) / np.sqrt(6)
  pers = np.sort(np.diff(_ripser_h(_block(a, 0.6 * a)), axis=1)[:, 0])[::-1]
  for card in (50, 4):
    np.testing.assert_allclose(rtd_loss(x, 0.6 * x, card=card), pers[:card].sum() / 2,
                               rtol=1e-5)


@pytest.mark.parametrize('mode, is_sym', [('minimum', True), ('minmax', True),
                                          ('minimum', False)])
def test_rtd_equals_reference_block_formula(mode, is_sym):
  # Births / deaths gathered from the reference's block matrices in numpy.
  x, y = _clouds(n=12, d=5, seed=4)
  a, b = cdist(x, x) / np.sqrt(5), cdist(y, y) / np.sqrt(5)
  minimum, maximum = _reference_terms(a, b)
  terms = minimum + (maximum if mode == 'minmax' else [])
  expected = 0.0
  for side, filt, births, deaths in terms:
    if side == 'zx' and not is_sym:
      continue
    idx = persistence_pairs(filt, dim=1, card=50)[0]
    expected += np.abs(deaths[idx[:, 2], idx[:, 3]] - births[idx[:, 0], idx[:, 1]]).sum()
  loss = rtd_loss(x, y, mode=mode, is_sym=is_sym)
  assert expected > 0
  np.testing.assert_allclose(loss, expected / 2, rtol=1e-5)


@pytest.mark.parametrize('mode', ['minimum', 'minmax'])
def test_rtd_gradient_matches_central_differences(mode):
  x, y = _clouds(n=12, d=4, seed=5)
  with jax.enable_x64(True):
    f = jax.jit(lambda r, c: rtd_loss(r, c, mode=mode))
    grads = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(y))
    for which, g in enumerate(grads):
      fd = numeric.central_differences(f, [x, y], which)
      assert np.abs(fd).max() > 1e-3
      np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)


def test_rtd_same_value_under_jit_vmap_and_dtypes():
  pairs = [_clouds(n=10, d=6, seed=s) for s in (6, 7, 8)]
  eager = np.array([float(rtd_loss(x, y)) for x, y in pairs])
  regs = jnp.asarray(np.stack([p[0] for p in pairs]), jnp.float32)
  curs = jnp.asarray(np.stack([p[1] for p in pairs]), jnp.float32)
  batched, aux = jax.jit(jax.vmap(lambda r, c: rtd_loss(r, c, return_aux=True)))(regs, curs)
  np.testing.assert_allclose(batched, eager, rtol=1e-5)
  assert aux['rtd_host_seconds'].shape == (3,)
  assert aux['rtd_host_seconds'].dtype == jnp.float32
  assert np.all(aux['rtd_host_seconds'] > 0)
  # One argument batched, the other shared.
  shared = jax.vmap(rtd_loss, in_axes=(None, 0))(regs[0], curs)
  np.testing.assert_allclose(shared[0], eager[0], rtol=1e-5)
  with jax.enable_x64(True):
    wide = [float(rtd_loss(jnp.asarray(x), jnp.asarray(y))) for x, y in pairs]
  np.testing.assert_allclose(wide, eager, rtol=1e-5)


def test_rtd_flattens_feature_maps():
  x, y = _clouds(n=8, d=12, seed=9)
  np.testing.assert_allclose(rtd_loss(x.reshape(8, 2, 3, 2), y.reshape(8, 3, 4)),
                             rtd_loss(x, y), rtol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='max'), 'mode'), (dict(dim=0), 'dim'), (dict(card=0), 'card'),
    (dict(lp=0.0), 'lp')])
def test_rtd_bad_arguments(kwargs, match):
  x, y = _clouds(n=6, d=3)
  with pytest.raises(ValueError, match=match):
    rtd_loss(x, y, **kwargs)


def test_rtd_bad_shapes():
  x, y = _clouds(n=6, d=3)
  with pytest.raises(ValueError, match='same samples'):
    rtd_loss(x, y[:5])
  with pytest.raises(ValueError, match=r'\[n, d\]'):
    rtd_loss(x[0], y[0])


@pytest.fixture
def set_workers():
  yield rtd.set_workers
  rtd.set_workers(None)


def test_process_pool_pairs_are_bit_identical_to_serial(set_workers):
  # Three members x the four MinMaxRTD filtrations of low-rank ReLU features in one call.
  rng = np.random.default_rng(11)
  z, w = rng.normal(size=(3, 24, 6)), rng.normal(size=(6, 32))
  x, y = np.maximum(z @ w, 0), np.maximum((z + 0.3 * rng.normal(size=z.shape)) @ w, 0)
  a = np.stack([cdist(m, m) for m in x]) / np.sqrt(32)
  b = np.stack([cdist(m, m) for m in y]) / np.sqrt(32)
  specs = tuple(t[1] for t in rtd._TERMS['minimum'] + rtd._TERMS['maximum'])
  set_workers(0)
  serial, _ = rtd._host_pairs(a, b, specs=specs, dim=1, card=300)
  assert rtd._POOL is None
  set_workers(2)
  pooled, seconds = rtd._host_pairs(a, b, specs=specs, dim=1, card=300)
  assert pooled.shape == (3, 4, 1, 300, 4) and seconds.shape == (3,)
  assert (pooled[..., 2] > 0).sum() > 100  # many pairs, not just padding
  np.testing.assert_array_equal(pooled, serial)
  pids = set(rtd._POOL[0]._processes)  # the work ran in other processes
  assert pids and os.getpid() not in pids
  # The loss under vmap, through the callback: the same float32 values.
  f = jax.jit(jax.vmap(lambda r, c: rtd_loss(r, c, mode='minmax')))
  pooled_loss = np.asarray(f(x.astype(np.float32), y.astype(np.float32)))
  set_workers(0)
  np.testing.assert_array_equal(f(x.astype(np.float32), y.astype(np.float32)), pooled_loss)


@pytest.mark.parametrize('value', [1.5, 'two', True])
def test_set_workers_rejects_non_integers(value):
  with pytest.raises(ValueError, match='rtd_workers'):
    rtd.set_workers(value)
