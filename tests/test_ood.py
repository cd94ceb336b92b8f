"""Uncertainty scores, OOD AUROC / AUPR, reliability bins and temperature scaling, against
direct numpy formulas, scikit-learn and hand-computed cases (no model)."""

import numpy as np
import pytest
from sklearn import metrics as sk

from enstransfer_jax import metrics
from enstransfer_jax.analysis import calibration, ood


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_uncertainty_against_numpy():
  rng = np.random.default_rng(0)
  member = _softmax(3 * rng.normal(size=(4, 50, 7)))
  got = metrics.uncertainty(member)
  mean = member.mean(0)
  h_mean = np.array([-sum(p * np.log(p)) for p in mean])
  h_members = np.array([[-sum(p * np.log(p)) for p in m] for m in member])
  np.testing.assert_allclose(got['entropy'], h_mean, rtol=1e-12)
  np.testing.assert_allclose(got['expected_entropy'], h_members.mean(0), rtol=1e-12)
  np.testing.assert_allclose(got['mutual_information'], h_mean - h_members.mean(0), atol=1e-12)
  np.testing.assert_allclose(got['member1_entropy'], h_members[0], rtol=1e-12)
  assert (got['mutual_information'] > 0).all()  # members differ everywhere
  same = metrics.uncertainty(np.repeat(member[:1], 3, 0))
  np.testing.assert_allclose(same['mutual_information'], 0.0, atol=1e-12)
  # A one-hot member has zero entropy (0 log 0 = 0), a uniform one log C.
  np.testing.assert_allclose(metrics.entropy(np.eye(3)), 0.0)
  np.testing.assert_allclose(metrics.entropy(np.full((1, 4), 0.25)), np.log(4))


def test_auroc_aupr_hand_computed():
  # OOD positive, higher score = OOD. Pairs (in, out): (0.1, 0.35) ok, (0.1, 0.8) ok,
  # (0.4, 0.35) wrong, (0.4, 0.8) ok -> AUROC 3/4. Ranking 0.8 (out), 0.4 (in), 0.35 (out),
  # 0.1 (in): precision 1/1 at the first OOD, 2/3 at the second -> AP (1 + 2/3) / 2.
  assert ood.auroc([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.75)
  assert ood.aupr([0.1, 0.4], [0.35, 0.8]) == pytest.approx((1 + 2 / 3) / 2)
  assert ood.auroc([0, 1], [2, 3]) == 1.0 and ood.auroc([2, 3], [0, 1]) == 0.0
  assert ood.auroc([1, 1], [1, 1]) == 0.5  # ties count one half
  with pytest.raises(ValueError, match='both in- and out-of-distribution'):
    ood.auroc([], [1.0])


def test_auroc_against_sklearn_and_mann_whitney():
  rng = np.random.default_rng(1)
  s_in = np.round(rng.normal(0, 1, 300), 1)  # rounded: ties
  s_out = np.round(rng.normal(0.7, 1, 120), 1)
  y = np.r_[np.zeros(300), np.ones(120)]
  s = np.r_[s_in, s_out]
  assert ood.auroc(s_in, s_out) == pytest.approx(sk.roc_auc_score(y, s))
  assert ood.aupr(s_in, s_out) == pytest.approx(sk.average_precision_score(y, s))
  diff = s_out[:, None] - s_in[None, :]
  assert ood.auroc(s_in, s_out) == pytest.approx(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def test_ood_results_rows():
  rng = np.random.default_rng(2)
  sharp = _softmax(6 * rng.normal(size=(3, 40, 5)))
  flat = _softmax(0.5 * rng.normal(size=(3, 30, 5)))
  res = ood.ood_results(sharp, flat)
  assert [r['score'] for r in res['rows']] == list(ood.SCORES)
  ent = next(r for r in res['rows'] if r['score'] == 'entropy')
  h_in = -np.sum(sharp.mean(0) * np.log(sharp.mean(0)), -1)
  h_out = -np.sum(flat.mean(0) * np.log(flat.mean(0)), -1)
  y = np.r_[np.zeros(40), np.ones(30)]
  assert ent['auroc'] == pytest.approx(sk.roc_auc_score(y, np.r_[h_in, h_out]))
  assert ent['mean_out'] == pytest.approx(h_out.mean()) and ent['auroc'] > 0.9


def test_parse_spec():
  assert ood.parse_spec('digits:0,1,2') == ('digits', (0, 1, 2))
  assert ood.parse_spec('CIFAR10') == ('cifar10', ())
  with pytest.raises(ValueError, match='integers separated by commas'):
    ood.parse_spec('digits:a,b')
  with pytest.raises(ValueError, match='DATASET'):
    ood.parse_spec(':1')


def test_reliability_bins_give_metrics_ece():
  rng = np.random.default_rng(3)
  probs = _softmax(2 * rng.normal(size=(500, 6)))
  probs[:20] = np.eye(6)[rng.integers(0, 6, 20)]  # confidence 1: the last bin, (14/15, 1]
  labels = rng.integers(0, 6, 500)
  bins = calibration.reliability(probs, labels)
  assert bins['count'].sum() == 500 and bins['count'][-1] >= 20
  full = bins['count'] > 0
  ece = np.sum(bins['count'][full] / 500 * np.abs(bins['accuracy'][full] -
                                                  bins['confidence'][full]))
  assert ece == pytest.approx(metrics.ece(probs, labels), rel=1e-10)


def _overconfident(seed, n=4000, c=5, sharpen=3.0):
  """Labels drawn from softmax(z); three members predict softmax(sharpen * z + small noise)."""
  rng = np.random.default_rng(seed)
  z = 1.5 * rng.normal(size=(n, c))
  labels = np.array([rng.choice(c, p=p) for p in _softmax(z)])
  members = np.stack([_softmax(sharpen * (z + 0.05 * rng.normal(size=z.shape)))
                      for _ in range(3)])
  return members.mean(0), labels


def test_temper_formula():
  p = _softmax(np.random.default_rng(4).normal(size=(10, 4)))
  np.testing.assert_allclose(metrics.temper(p, 2.0), _softmax(np.log(p) / 2.0), rtol=1e-12)
  np.testing.assert_allclose(metrics.temper(p, 1.0), p, rtol=1e-12)
  assert calibration.tempered_nll(p, np.arange(10) % 4, 2.0) == pytest.approx(
      metrics.nll(_softmax(np.log(p) / 2.0), np.arange(10) % 4))
  with pytest.raises(ValueError, match='temperature must be > 0'):
    metrics.temper(p, 0.0)


def test_temperature_scaling_fixes_overconfidence():
  fit_p, fit_y = _overconfident(5)
  test_p, test_y = _overconfident(6)
  t = calibration.fit_temperature(fit_p, fit_y)
  grid = np.exp(np.linspace(np.log(0.5), np.log(10), 4001))
  best = grid[np.argmin([calibration.tempered_nll(fit_p, fit_y, g) for g in grid])]
  assert t == pytest.approx(best, rel=2e-3)  # the bounded search finds the grid minimum
  assert 2.4 < t < 3.6  # undoes the sharpening by 3
  res, after, after_y = calibration.calibrate(fit_p, fit_y, test_p, test_y)
  assert res['after']['nll'] < res['before']['nll'] - 0.1
  assert res['after']['ece'] < res['before']['ece']
  assert res['after']['acc'] == res['before']['acc']
  np.testing.assert_array_equal(after.argmax(-1), test_p.argmax(-1))
  assert res['after']['nll'] == pytest.approx(metrics.nll(metrics.temper(test_p, t), test_y))
  # Without separate data: 2-fold cross-fitting on the one split.
  res, after, _ = calibration.calibrate(test_p, test_y)
  assert len(res['fold_temperatures']) == 2 and all(2.4 < f < 3.6 for f in
                                                    res['fold_temperatures'])
  assert res['after']['nll'] < res['before']['nll'] - 0.1
  assert res['after']['acc'] == res['before']['acc']
