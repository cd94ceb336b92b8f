"""Classification and ensemble metrics on saved probabilities (numpy, host side).

All functions take softmax probabilities [N, C] (float) and integer labels [N]:
  accuracy         fraction of argmax == label (top-1)
  mean_per_class   mean over present classes of the per-class top-1 accuracy
  nll              mean -log p(label), probabilities clipped at 1e-12
  ece              expected calibration error, 15 equal-width confidence bins
  brier            mean over samples of sum_c (p_c - onehot_c)^2
  diversity        100 * mean over member pairs of P(pred_i != pred_j) / max(err_i, err_j)
                   (the thesis's normalised disagreement: the disagreement of two members
                   divided by the larger of their two error rates, in %)
and, for the ensemble's predictions (ensemble.py, the analysis):
  entropy(probs)   Shannon entropy -sum_c p_c log p_c (nats; 0 log 0 = 0)
  uncertainty(member_probs [K, N, C])
                   per example: entropy = H(mean_k p_k), expected_entropy = mean_k H(p_k),
                   mutual_information = entropy - expected_entropy (>= 0, the members'
                   disagreement), member1_entropy = H(p_1)
  temper(probs, T) softmax(log(probs) / T): temperature scaling of a probability vector
                   (T > 1 softens, T < 1 sharpens; argmax unchanged)
"""

import itertools

import numpy as np

from enstransfer_jax.errors import UserError

_EPS = 1e-12  # probabilities are clipped here before a log


def accuracy(probs, labels):
  return float(np.mean(np.argmax(probs, -1) == labels))


def mean_per_class(probs, labels):
  preds = np.argmax(probs, -1)
  return float(np.mean([np.mean(preds[labels == c] == c) for c in np.unique(labels)]))


METRICS = {'top1': accuracy, 'mean_per_class': mean_per_class}


def nll(probs, labels):
  p = probs[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def ece(probs, labels, n_bins=15):
  conf = np.max(probs, -1)
  correct = np.argmax(probs, -1) == labels
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      total += in_bin.mean() * abs(conf[in_bin].mean() - correct[in_bin].mean())
  return float(total)


def brier(probs, labels):
  onehot = np.eye(probs.shape[-1])[labels]
  return float(np.mean(np.sum((probs - onehot) ** 2, -1)))


def pairwise_diversity(member_probs, labels):
  """[K, K] matrix of P(pred_i != pred_j) / max(err_i, err_j) * 100 (diagonal 0)."""
  preds = [np.argmax(p, -1) for p in member_probs]
  errs = [np.mean(p != labels) for p in preds]
  k = len(preds)
  out = np.zeros((k, k))
  for i, j in itertools.combinations(range(k), 2):
    denom = max(errs[i], errs[j])
    value = 100.0 * np.mean(preds[i] != preds[j]) / denom if denom > 0 else 0.0
    out[i, j] = out[j, i] = value
  return out


def diversity(member_probs, labels):
  k = len(member_probs)
  if k < 2:
    return 0.0
  mat = pairwise_diversity(member_probs, labels)
  return float(mat[np.triu_indices(k, 1)].mean())


def ensemble_summary(member_probs, labels, metric='top1'):
  """The summary.json body: per member, per ensemble size (members 1..k averaged), diversity."""
  score = METRICS[metric]
  members = [{'member': i + 1, 'test_acc': score(p, labels), 'test_nll': nll(p, labels)}
             for i, p in enumerate(member_probs)]
  ensembles = []
  running = np.zeros_like(member_probs[0], dtype=np.float64)
  for k, p in enumerate(member_probs, start=1):
    running += p
    avg = running / k
    ensembles.append({'size': k, 'acc': score(avg, labels), 'nll': nll(avg, labels),
                      'ece': ece(avg, labels), 'brier': brier(avg, labels)})
  return {
      'metric': metric,
      'members': members,
      'ensembles': ensembles,
      'mean_member_acc': float(np.mean([m['test_acc'] for m in members])),
      'diversity': diversity(member_probs, labels),
  }


def format_summary(summary):
  """The table printed at the end of a run (accuracies in %)."""
  lines = ['member  acc(%)   nll', *(f"{m['member']:>6}  {100 * m['test_acc']:6.2f}  {m['test_nll']:.4f}"
                                    for m in summary['members'])]
  lines += ['', 'ensemble size  acc(%)   nll     ece', *(
      f"{e['size']:>13}  {100 * e['acc']:6.2f}  {e['nll']:.4f}  {e['ece']:.4f}" for e in summary['ensembles'])]
  last = summary['ensembles'][-1]
  lines += ['', f"mean member acc {100 * summary['mean_member_acc']:.2f}%  |  "
                f"ensemble of {last['size']} acc {100 * last['acc']:.2f}% "
                f"({100 * (last['acc'] - summary['mean_member_acc']):+.2f} pts)  |  "
                f"diversity {summary['diversity']:.2f}"]
  return '\n'.join(lines)


def entropy(probs, axis=-1):
  """Shannon entropy (nats) along `axis`; 0 log 0 = 0."""
  p = np.asarray(probs, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.clip(p, _EPS, None)), 0.0), axis=axis)


def uncertainty(member_probs):
  """{'entropy', 'expected_entropy', 'mutual_information', 'member1_entropy'} per example."""
  mp = np.asarray(member_probs, np.float64)
  total = entropy(mp.mean(0))
  member = entropy(mp)  # [K, N]
  expected = member.mean(0)
  return {'entropy': total, 'expected_entropy': expected,
          'mutual_information': np.maximum(total - expected, 0.0), 'member1_entropy': member[0]}


def temper(probs, temperature):
  """softmax(log(probs) / T) row by row (float64)."""
  t = float(temperature)
  if not t > 0:
    raise UserError(f'temperature must be > 0, got {temperature}')
  z = np.log(np.clip(np.asarray(probs, np.float64), _EPS, None)) / t
  z -= z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)
