"""Linear CKA, MSE and RTD of the analysis against closed forms and known invariances."""

import numpy as np
import pytest

from enstransfer_jax.analysis import similarity


def hsic_cka(x, y):
  """CKA from the HSIC estimator with explicit centring matrices (Gretton et al., 2005)."""
  n = x.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  hsic = lambda k, l: np.trace(k @ h @ l @ h) / (n - 1) ** 2
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _data(n, d1, d2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d1))
  y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.3 * rng.normal(size=(n, d2))
  return x, y


@pytest.mark.parametrize('n,d1,d2', [(40, 6, 9), (12, 30, 50)])  # feature / example space
def test_cka_equals_hsic_formula(n, d1, d2):
  x, y = _data(n, d1, d2)
  np.testing.assert_allclose(similarity.linear_cka(x, y), hsic_cka(x, y), rtol=1e-10)
  kc, lc = similarity.centered_gram(x), similarity.centered_gram(y)
  np.testing.assert_allclose(similarity.cka_from_grams(kc, lc), hsic_cka(x, y), rtol=1e-10)


def test_chunked_statistics(monkeypatch):
  """Grams and MSE accumulated over column chunks (big maps) equal the one-shot formulas."""
  monkeypatch.setattr(similarity, '_CHUNK', 4)
  x, y = _data(9, 11, 11, seed=5)
  np.testing.assert_allclose(similarity.linear_cka(x, y), hsic_cka(x, y), rtol=1e-10)
  np.testing.assert_allclose(similarity.feature_mse(x, y), np.mean((x - y) ** 2), rtol=1e-12)


def test_cka_of_one_feature_is_squared_correlation():
  x, y = _data(30, 1, 1, seed=3)
  r = np.corrcoef(x[:, 0], y[:, 0])[0, 1]
  np.testing.assert_allclose(similarity.linear_cka(x, y), r ** 2, rtol=1e-10)


@pytest.mark.parametrize('n,d', [(50, 8), (10, 40)])
def test_cka_invariances(n, d):
  x, y = _data(n, d, d, seed=1)
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))
  np.testing.assert_allclose(similarity.linear_cka(x, x @ q), 1.0, rtol=1e-10)
  np.testing.assert_allclose(similarity.linear_cka(x, -3.5 * x), 1.0, rtol=1e-10)
  base = similarity.linear_cka(x, y)
  assert base < 0.99
  np.testing.assert_allclose(similarity.linear_cka(x, 2.0 * y @ q + 7.0), base, rtol=1e-9)
  np.testing.assert_allclose(similarity.linear_cka(y, x), base, rtol=1e-10)


def test_cka_of_maps_flattens_per_example():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(10, 3, 3, 2)), rng.normal(size=(10, 2, 2, 5))
  np.testing.assert_allclose(similarity.linear_cka(x, y),
                             hsic_cka(x.reshape(10, -1), y.reshape(10, -1)), rtol=1e-10)


def test_mse_and_compare():
  x, y = _data(20, 5, 5)
  np.testing.assert_allclose(similarity.feature_mse(x, y),
                             np.sum((x - y) ** 2) / x.size, rtol=1e-12)
  out = similarity.compare(x, y, with_rtd=False)
  np.testing.assert_allclose(out['cka'], hsic_cka(x, y), rtol=1e-10)
  assert np.isnan(out['rtd'])
  assert np.isnan(similarity.compare(x, y[:, :3], with_rtd=False)['mse'])  # shapes differ


def test_rtd_identity_and_scaling():
  x, y = _data(24, 6, 6)
  assert similarity.rtd(x, x, points=24) == pytest.approx(0.0, abs=1e-6)
  value = similarity.rtd(x, y, points=16)
  assert value > 0
  # A and B are distances / sqrt(d): scaling both clouds scales every bar.
  np.testing.assert_allclose(similarity.rtd(3 * x, 3 * y, points=16), 3 * value, rtol=1e-4)
  # Only the first `points` examples enter.
  np.testing.assert_allclose(similarity.rtd(x[:16], y[:16], points=100), value, rtol=1e-6)


def test_bad_inputs():
  x, y = _data(10, 3, 3)
  with pytest.raises(ValueError, match='same examples'):
    similarity.linear_cka(x, y[:9])
  with pytest.raises(ValueError, match='equal shape'):
    similarity.feature_mse(x, y[:, :2])
  with pytest.raises(ValueError, match='n >= 2'):
    similarity.linear_cka(x[:1], y[:1])
  with pytest.raises(ValueError, match='at least 3'):
    similarity.rtd(x, y, points=2)
