"""Ensemble metrics against hand computation on tiny examples."""

import numpy as np
import pytest

from enstransfer_jax import metrics

LABELS = np.array([0, 1, 2, 1])
# member A predicts 0,1,2,2 (1 error); member B predicts 0,2,2,1 (1 error); C predicts 1,1,0,1 (2 errors)
A = np.array([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.1, .3, .6]])
B = np.array([[.5, .3, .2], [.2, .3, .5], [.1, .1, .8], [.2, .6, .2]])
C = np.array([[.3, .6, .1], [.3, .4, .3], [.5, .1, .4], [.1, .8, .1]])


def test_accuracy_nll_brier_by_hand():
  assert metrics.accuracy(A, LABELS) == 0.75
  assert metrics.nll(A, LABELS) == pytest.approx(-np.mean(np.log([.7, .8, .6, .3])))
  brier_a = np.mean([(.3 ** 2 + .2 ** 2 + .1 ** 2), (.1 ** 2 + .2 ** 2 + .1 ** 2),
                     (.2 ** 2 + .2 ** 2 + .4 ** 2), (.1 ** 2 + .7 ** 2 + .6 ** 2)])
  assert metrics.brier(A, LABELS) == pytest.approx(brier_a)


def test_mean_per_class():
  # class 0: 1/1, class 1: 1/2 (sample 3 wrong), class 2: 1/1 -> (1 + .5 + 1) / 3
  assert metrics.mean_per_class(A, LABELS) == pytest.approx(2.5 / 3)


def test_ece_by_hand():
  # confidences .7 .8 .6 .6, correct 1 1 1 0; 15 bins of width 1/15:
  # .6 -> bin (8/15, 9/15] = (.533,.6]; .7 -> (.667,.733]; .8 -> (.733,.8]
  expected = (2 / 4) * abs(.6 - .5) + (1 / 4) * abs(.7 - 1) + (1 / 4) * abs(.8 - 1)
  assert metrics.ece(A, LABELS) == pytest.approx(expected)


def test_diversity_by_hand():
  # A vs B disagree on samples 1 and 3: 2/4, max err .25 -> 200; A vs C: 0,2,3 -> 3/4 / .5 = 150
  # B vs C: 0,1,2 -> 3/4 / .5 = 150
  mat = metrics.pairwise_diversity([A, B, C], LABELS)
  assert mat[0, 1] == pytest.approx(200) and mat[0, 2] == pytest.approx(150)
  assert mat[1, 2] == pytest.approx(150) and mat[0, 0] == 0
  assert metrics.diversity([A, B, C], LABELS) == pytest.approx(500 / 3)


def test_ensemble_summary_averages_members_1_to_k():
  s = metrics.ensemble_summary([A, B, C], LABELS)
  # By hand: (A+B)/2 predicts 0,1,2,1 -> 4/4; (A+B+C)/3 predicts 0,1,2,1 -> 4/4.
  avg2, avg3 = (A + B) / 2, (A + B + C) / 3
  np.testing.assert_array_equal(avg2.argmax(-1), [0, 1, 2, 1])
  assert [e['size'] for e in s['ensembles']] == [1, 2, 3]
  assert s['ensembles'][0]['acc'] == 0.75 and s['ensembles'][1]['acc'] == 1.0
  assert s['ensembles'][2]['acc'] == np.mean(avg3.argmax(-1) == LABELS)
  # NLL: minus the mean log of each average's probability of the true label.
  assert s['ensembles'][1]['nll'] == pytest.approx(
      -np.mean(np.log([(.7 + .5) / 2, (.8 + .3) / 2, (.6 + .8) / 2, (.3 + .6) / 2])))
  assert s['ensembles'][2]['nll'] == pytest.approx(
      -np.mean(np.log([1.5 / 3, 1.5 / 3, 1.8 / 3, 1.7 / 3])))
  assert s['ensembles'][0]['nll'] == pytest.approx(-np.mean(np.log([.7, .8, .6, .3])))
  assert [m['test_acc'] for m in s['members']] == [0.75, 0.75, 0.5]
  assert s['members'][2]['test_nll'] == pytest.approx(-np.mean(np.log([.3, .4, .4, .8])))
  assert s['mean_member_acc'] == pytest.approx((0.75 + 0.75 + 0.5) / 3)
  assert s['diversity'] == pytest.approx(500 / 3)
  assert 'diversity' in metrics.format_summary(s)
