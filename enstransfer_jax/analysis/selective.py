"""Selective prediction: the risk-coverage curve and its area (AURC).

A model that may abstain answers the examples it is most confident about first. With the
N examples ordered by decreasing confidence (the maximum probability; ties kept in their
given order, a stable sort), answering the first k of them has

  coverage(k) = k / N,   risk(k) = (errors among those k) / k,     k = 1..N,

and the area under the risk-coverage curve is AURC = (1/N) sum_k risk(k) (Geifman et al.
2019, "Bias-reduced uncertainty estimation for deep neural classifiers"; lower is better).
The best ordering any confidence could give (every error last) has the area
  AURC* = (1/N) sum_{k > N - E} (k - (N - E)) / k     (E errors in all),
and E-AURC = AURC - AURC* removes that part, which depends on the accuracy alone.
"""

import numpy as np


def risk_coverage(probs, labels, confidence=None):
  """(coverage [N], risk [N]) of answering the k most confident examples, k = 1..N."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or len(probs) != len(labels) or not len(labels):
    raise ValueError(f'risk_coverage needs probabilities [N, C] and N labels, N > 0; got '
                     f'{probs.shape} and {labels.shape}')
  conf = probs.max(-1) if confidence is None else np.asarray(confidence, np.float64)
  errors = (probs.argmax(-1) != labels).astype(np.float64)
  order = np.argsort(-conf, kind='stable')
  k = np.arange(1, len(labels) + 1)
  return k / len(labels), np.cumsum(errors[order]) / k


def aurc(probs, labels, confidence=None):
  """Area under the risk-coverage curve: the mean of risk(k) over k = 1..N."""
  return float(np.mean(risk_coverage(probs, labels, confidence)[1]))


def optimal_aurc(probs, labels):
  """AURC* of the same predictions with every error ordered last."""
  n = len(labels)
  e = int(np.sum(np.asarray(probs).argmax(-1) != np.asarray(labels)))
  k = np.arange(n - e + 1, n + 1)
  return float(np.sum((k - (n - e)) / k) / n)


def summary(probs, labels):
  """{'aurc', 'e_aurc', 'risk_at_80', 'risk_at_90'}: the area, its excess over AURC*, and
  the risk when answering the 80% / 90% most confident examples."""
  coverage, risk = risk_coverage(probs, labels)
  area = float(np.mean(risk))
  at = lambda c: float(risk[max(int(np.ceil(c * len(risk))) - 1, 0)])
  return {'aurc': area, 'e_aurc': area - optimal_aurc(probs, labels),
          'risk_at_80': at(0.8), 'risk_at_90': at(0.9), 'coverage': coverage, 'risk': risk}
