"""RTD-Lite against scipy's minimum spanning tree, float64 numpy, a brute-force barcode and
finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist

from enstransfer_jax.analysis import rtd_lite as barcode_lib
from enstransfer_jax.losses import mst_mask
from enstransfer_jax.losses import mst_weight
from enstransfer_jax.losses import rtd_lite_loss
from enstransfer_jax.losses import rtd_loss
from tests import numeric


def _scipy_mst(dm):
  # scipy reads a 0 entry as a missing edge: offset every weight, then take it off again.
  n = dm.shape[0]
  return minimum_spanning_tree(np.triu(dm + 1.0, 1)).sum() - (n - 1) if n > 1 else 0.0


def _clouds(n=12, d=5, seed=0, noise=0.5, relu=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x + noise * rng.normal(size=(n, d))
  return (np.maximum(x, 0), np.maximum(y, 0)) if relu else (x, y)


def _matrices(seed):
  """(name, dm): distances, rounded distances (ties), duplicate points, integer weights."""
  rng = np.random.default_rng(seed)
  out = []
  for n in (2, 3, 4, 9, 31):
    x = rng.normal(size=(n, 3))
    out.append((f'random n={n}', cdist(x, x)))
    out.append((f'ties n={n}', np.round(2 * cdist(x, x)) / 2))
    if n > 2:
      x[1], x[n - 1] = x[0], x[2]
      out.append((f'duplicates n={n}', cdist(x, x)))
    w = np.triu(rng.integers(0, 3, size=(n, n)), 1).astype(float)
    out.append((f'integer n={n}', w + w.T))
  return out


@pytest.mark.parametrize('name, dm', _matrices(0))
def test_mst_weight_matches_scipy(name, dm):
  with jax.enable_x64(True):
    weight = float(mst_weight(jnp.asarray(dm)))
    tree = np.asarray(mst_mask(jnp.asarray(dm)))
  np.testing.assert_allclose(weight, _scipy_mst(dm), rtol=1e-12, atol=1e-12, err_msg=name)
  # n - 1 edges, upper triangle, connecting every vertex: a spanning tree.
  n = dm.shape[0]
  assert tree.sum() == n - 1 and not np.tril(tree).any()
  assert connected_components(tree.astype(float), directed=False)[0] == 1


def test_mst_weight_batched_and_deterministic_at_ties():
  dms = np.stack([dm for _, dm in _matrices(1) if dm.shape[0] == 9])
  masks = np.asarray(mst_mask(jnp.asarray(dms, jnp.float32)))
  np.testing.assert_allclose(mst_weight(jnp.asarray(dms, jnp.float32)),
                             [_scipy_mst(dm) for dm in dms], rtol=1e-5)
  # All weights equal: every vertex joins its lowest-index neighbour, i.e. the star at 0.
  star = np.asarray(mst_mask(jnp.ones((6, 6)) - jnp.eye(6)))
  np.testing.assert_array_equal(np.nonzero(star), (np.zeros(5), np.arange(1, 6)))
  np.testing.assert_array_equal(np.asarray(mst_mask(jnp.asarray(dms, jnp.float32))), masks)


def _numpy_loss(x, y, normalize, quantile=0.9):
  """The RTD-Lite loss in float64 numpy: scipy distances and spanning trees."""
  def norm(f):
    dm = cdist(f, f)
    return dm / (np.sqrt(f.shape[1]) if normalize == 'sqrt_dim' else np.quantile(dm, quantile))
  a, b = norm(x), norm(y)
  c = np.minimum(a, b)
  return 0.5 * ((_scipy_mst(a) - _scipy_mst(c)) + (_scipy_mst(b) - _scipy_mst(c)))


@pytest.mark.parametrize('normalize', ['sqrt_dim', 'quantile'])
@pytest.mark.parametrize('seed, n, d, relu', [(0, 12, 5, False), (1, 64, 256, True),
                                              (2, 40, 16, True)])
def test_loss_matches_float64_numpy(normalize, seed, n, d, relu):
  x, y = _clouds(n, d, seed, relu=relu)
  y = y[:, :d - 3]  # another width for the current features
  expected = _numpy_loss(x, y, normalize)
  assert expected > 0.01
  got = rtd_lite_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                      normalize=normalize)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  loss, aux = rtd_lite_loss(x, y, normalize=normalize, return_aux=True)
  np.testing.assert_allclose(loss, 0.5 * (aux['mst_reg'] + aux['mst_cur']) - aux['mst_min'],
                             rtol=1e-5)


def test_loss_quantile_level_and_invariances():
  x, y = _clouds(20, 6, 3)
  np.testing.assert_allclose(rtd_lite_loss(x, y, normalize='quantile', quantile=0.5),
                             _numpy_loss(x, y, 'quantile', 0.5), rtol=1e-5)
  # Quantile normalisation ignores each cloud's scale; sqrt_dim scales with it.
  np.testing.assert_allclose(rtd_lite_loss(3 * x, 0.5 * y, normalize='quantile'),
                             rtd_lite_loss(x, y, normalize='quantile'), rtol=1e-5)
  np.testing.assert_allclose(rtd_lite_loss(3 * x, 3 * y), 3 * rtd_lite_loss(x, y), rtol=1e-5)
  assert float(rtd_lite_loss(x, x)) == 0.0
  assert float(rtd_lite_loss(np.ones((5, 3)), np.ones((5, 3)), normalize='quantile')) == 0.0
  np.testing.assert_allclose(rtd_lite_loss(x.reshape(20, 2, 3), y), rtd_lite_loss(x, y))


def _brute_barcode(a, b):
  """The reference's procedure: per C-edge, a fresh union-find over the other tree's edges."""
  c = np.minimum(a, b)
  births = barcode_lib.mst_edges(c)
  out = {}
  for name, dm in (('a', a), ('b', b)):
    tree, label, bars = barcode_lib.mst_edges(dm), np.arange(len(a)), []
    for u, v in births:
      joined = label.copy()
      for p, q in tree:
        joined[joined == joined[q]] = joined[p]
        if joined[u] == joined[v]:
          death = dm[p, q]
          break
      if death > c[u, v]:
        bars.append((c[u, v], death))
      label[label == label[v]] = label[u]
    out[name] = np.array(bars).reshape(-1, 2)
  return out


@pytest.mark.parametrize('seed, n, rounded', [(0, 2, False), (1, 3, False), (2, 25, False),
                                              (3, 25, True), (4, 40, False)])
def test_barcode_matches_brute_force_and_sums_to_mst_difference(seed, n, rounded):
  x, y = _clouds(n, 4, seed, noise=1.0)
  a, b = cdist(x, x), cdist(y, y)
  if rounded:
    a, b = np.round(a), np.round(b)
  bars, brute = barcode_lib.rtd_lite_barcode(a, b), _brute_barcode(a, b)
  mst_c = _scipy_mst(np.minimum(a, b))
  for side, dm in (('a', a), ('b', b)):
    np.testing.assert_allclose(np.sort(bars[side], axis=0), np.sort(brute[side], axis=0))
    assert np.all(bars[side][:, 1] > bars[side][:, 0])
    np.testing.assert_allclose(np.sum(bars[side][:, 1] - bars[side][:, 0]),
                               _scipy_mst(dm) - mst_c, rtol=1e-9, atol=1e-12)
  if not rounded:  # the loss of the features: half the summed bars of cdist / sqrt(4)
    with jax.enable_x64(True):
      loss = rtd_lite_loss(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(barcode_lib.rtd_lite(a / 2, b / 2), loss, rtol=1e-9)


@pytest.mark.parametrize('normalize', ['sqrt_dim', 'quantile'])
def test_gradient_matches_central_differences(normalize):
  x, y = _clouds(10, 4, 5)  # continuous random points: no ties between candidate edges
  with jax.enable_x64(True):
    f = jax.jit(lambda r, c: rtd_lite_loss(r, c, normalize=normalize))
    grads = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(y))
    for which, g in enumerate(grads):
      fd = numeric.central_differences(f, [x, y], which)
      assert np.abs(fd).max() > 1e-2
      np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


def test_same_value_under_jit_vmap_and_scan():
  pairs = [_clouds(16, 8, s, relu=True) for s in (6, 7, 8)]
  eager = np.array([float(rtd_lite_loss(x, y)) for x, y in pairs])
  regs = jnp.asarray(np.stack([p[0] for p in pairs]), jnp.float32)
  curs = jnp.asarray(np.stack([p[1] for p in pairs]), jnp.float32)
  np.testing.assert_allclose(jax.jit(rtd_lite_loss)(regs[0], curs[0]), eager[0], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(rtd_lite_loss))(regs, curs), eager, rtol=1e-6)
  shared = jax.vmap(rtd_lite_loss, in_axes=(None, 0))(regs[0], curs)
  np.testing.assert_allclose(shared[0], eager[0], rtol=1e-6)

  def body(total, rc):
    value, grad = jax.value_and_grad(rtd_lite_loss, argnums=1)(*rc)
    return total + value, grad
  total, grads = jax.jit(lambda r, c: jax.lax.scan(body, 0.0, (r, c)))(regs, curs)
  np.testing.assert_allclose(total, eager.sum(), rtol=1e-6)
  np.testing.assert_allclose(grads[1], jax.grad(rtd_lite_loss, argnums=1)(regs[1], curs[1]),
                             rtol=1e-5, atol=1e-7)


def test_lowered_program_has_no_host_callback():
  x, y = _clouds(8, 4, 9)
  text = lambda fn: jax.jit(jax.grad(fn, argnums=1)).lower(x, y).as_text()
  assert 'callback' in text(lambda r, c: rtd_loss(r, c))  # the check sees the exact RTD's
  assert 'callback' not in text(lambda r, c: rtd_lite_loss(r, c))
  assert 'custom_call' not in text(lambda r, c: rtd_lite_loss(r, c, normalize='quantile'))


@pytest.mark.parametrize('kwargs, match', [
    (dict(normalize='max'), 'normalize'), (dict(quantile=0.0), 'quantile'),
    (dict(quantile=1.5), 'quantile')])
def test_bad_arguments(kwargs, match):
  x, y = _clouds(6, 3)
  with pytest.raises(ValueError, match=match):
    rtd_lite_loss(x, y, **kwargs)
  with pytest.raises(ValueError, match='same samples'):
    rtd_lite_loss(x, y[:5])
  with pytest.raises(ValueError, match='square'):
    barcode_lib.rtd_lite_barcode(np.zeros((3, 4)), np.zeros((3, 4)))


def test_analysis_rtd_lite_of_features_matches_float64_numpy():
  from enstransfer_jax.analysis import similarity  # pylint: disable=g-import-not-at-top
  x, y = _clouds(30, 12, 10, relu=True)
  y = y[:, :7]
  expected = _numpy_loss(x, y, 'sqrt_dim')
  np.testing.assert_allclose(similarity.rtd_lite(x, y), expected, rtol=1e-9)
  out = similarity.compare(x.reshape(30, 3, 4), y, with_rtd=False)
  np.testing.assert_allclose(out['rtd_lite'], expected, rtol=1e-9)
