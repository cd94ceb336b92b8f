"""The RTD metric (IlyaTrofimov/RTD rtd/barcodes.py) against ripser.py, computed here from
scipy's distances and numpy's quantile (the module under test uses giotto-ph)."""

import numpy as np
import pytest
import ripser
from scipy.spatial.distance import cdist

from enstransfer_jax import analysis
from enstransfer_jax.analysis import rtd_metric


def reference_rtd1(a, b):
  """One direction of barcodes.py's rtd1 on clouds a, b: H1 total persistence (ripser.py)."""
  r1, r2 = cdist(a, a), cdist(b, b)
  r1, r2 = r1 / np.quantile(r1, 0.9), r2 / np.quantile(r2, 0.9)
  n = len(a)
  d = np.zeros((2 * n, 2 * n))
  d[n:, :n], d[:n, n:], d[n:, n:] = r1, r1.T, np.minimum(r1, r2)
  d[d < r1.mean() * 1e-6] = 0
  h1 = ripser.ripser(d, maxdim=1, distance_matrix=True)['dgms'][1]
  return float(np.sum(h1[:, 1] - h1[:, 0]))


def reference_rtd(a, b):
  return 0.5 * (reference_rtd1(a, b) + reference_rtd1(b, a))


def _clouds(n, d1, d2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d1))
  y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.4 * rng.normal(size=(n, d2))
  return x, y


def test_is_exported():
  assert analysis.rtd_score is rtd_metric.rtd_score


@pytest.mark.parametrize('n,d1,d2,seed', [(40, 5, 7, 0), (60, 16, 16, 1), (25, 3, 30, 2)])
def test_equals_ripser_below_batch(n, d1, d2, seed):
  """n <= batch: every trial is the whole cloud, so RTD is one deterministic value."""
  x, y = _clouds(n, d1, d2, seed)
  want = reference_rtd(x, y)
  assert want > 0.05
  got = analysis.rtd_score(x, y)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert analysis.rtd_score(x, y, trials=3, seed=7) == got  # no randomness below batch
  np.testing.assert_allclose(analysis.rtd_score(y, x), want, rtol=1e-5)  # symmetric


def test_trials_average_random_subsets():
  """n > batch: the mean over `trials` subsets, the first `batch` of each permutation."""
  x, y = _clouds(45, 6, 6, seed=3)
  rng = np.random.default_rng(11)
  subsets = [rng.permutation(45)[:20] for _ in range(3)]
  want = np.mean([reference_rtd(x[i], y[i]) for i in subsets])
  np.testing.assert_allclose(analysis.rtd_score(x, y, trials=3, batch=20, seed=11), want,
                             rtol=1e-5)
  assert analysis.rtd_score(x, y, trials=3, batch=20, seed=12) != pytest.approx(want, rel=1e-3)


def test_invariances_and_zero():
  x, y = _clouds(30, 8, 8, seed=4)
  q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(8, 8)))
  assert analysis.rtd_score(x, 3.0 * x @ q + 2.0) == pytest.approx(0.0, abs=1e-6)
  base = reference_rtd(x, y)
  np.testing.assert_allclose(analysis.rtd_score(0.5 * x @ q - 1.0, 4.0 * y), base, rtol=1e-5)


def test_maps_flatten_and_distances():
  """Feature maps [n, h, w, c] compare as flat vectors; chunked and Gram distances = cdist."""
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(20, 2, 3, 4)), rng.normal(size=(20, 5))
  np.testing.assert_allclose(analysis.rtd_score(x, y),
                             reference_rtd(x.reshape(20, -1), y), rtol=1e-5)
  flat = x.reshape(20, -1) * 50.0 + 1e3
  np.testing.assert_allclose(rtd_metric.distance_matrix(flat), cdist(flat, flat), rtol=1e-9,
                             atol=1e-9)
  np.testing.assert_allclose(rtd_metric.distances_from_gram(flat @ flat.T), cdist(flat, flat),
                             rtol=1e-7, atol=1e-6)


def test_chunked_distances(monkeypatch):
  monkeypatch.setattr(rtd_metric, '_CHUNK', 4)
  x = np.random.default_rng(7).normal(size=(9, 11))
  np.testing.assert_allclose(rtd_metric.distance_matrix(x), cdist(x, x), rtol=1e-10, atol=1e-12)


def test_bad_inputs_and_degenerate_clouds():
  x, y = _clouds(10, 3, 3)
  with pytest.raises(ValueError, match='same examples'):
    analysis.rtd_score(x, y[:9])
  with pytest.raises(ValueError, match='trials=0'):
    analysis.rtd_score(x, y, trials=0)
  with pytest.raises(ValueError, match='batch=1'):
    analysis.rtd_score(x, y, batch=1)
  with pytest.raises(ValueError, match='n >= 2'):
    analysis.rtd_score(x[:1], y[:1])
  assert np.isnan(analysis.rtd_score(np.zeros((10, 3)), y))  # every distance 0


def test_analysis_column_uses_the_metric():
  """similarity.compare's 'rtd_metric' (from centred Grams) is the metric of the features."""
  from enstransfer_jax.analysis import pipeline, similarity  # pylint: disable=g-import-not-at-top
  x, y = _clouds(30, 6, 9, seed=8)
  row = similarity.compare(x, y, with_rtd=False, rtd_trials=2, rtd_batch=20)
  rng = np.random.default_rng(0)
  subsets = [rng.permutation(30)[:20] for _ in range(2)]
  np.testing.assert_allclose(row['rtd_metric'],
                             np.mean([reference_rtd(x[i], y[i]) for i in subsets]), rtol=1e-5)
  assert np.isnan(similarity.compare(x, y, with_rtd=False, rtd_batch=0)['rtd_metric'])
  assert (pipeline.Options().rtd_trials, pipeline.Options().rtd_batch) == (10, 500)
  with pytest.raises(ValueError, match='rtd_trials must be >= 1'):
    pipeline.Options(rtd_trials=0).check()
