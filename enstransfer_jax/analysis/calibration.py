"""Calibration of the ensemble: reliability diagrams and temperature scaling.

  reliability(probs, labels)   per confidence bin (the 15 equal-width bins of metrics.ece: a
                               prediction of confidence c falls in (lo, hi]) the number of
                               examples, their mean confidence and their accuracy; ECE is
                               sum_b n_b / N |acc_b - conf_b|, equal to metrics.ece.
  metrics.temper(probs, T)     softmax(log(probs) / T): temperature scaling of a probability
                               vector (for the ensemble, the log of the mean of the members'
                               probabilities; T > 1 softens, T < 1 sharpens; argmax unchanged).
  fit_temperature(probs, labels)
                               the T in [0.05, 20] minimising the NLL of
                               metrics.temper(probs, T), a bounded 1-D search over log T
                               (scipy's minimize_scalar).

Where the temperature is fitted (calibrate): the members were trained on the whole training
split, so no part of it is held out from them. With use_test=False the run's evaluation split
is a validation split carved from train: T is fitted on it (the saved probabilities) and NLL /
ECE before and after are measured on the official test split. With use_test=True the run saw
no validation data: T is fitted by 2-fold cross-validation on the test split (a stratified
half, seed 0, fits T for the other half and vice versa; Ashukha et al. 2020, "test-time
cross-validation"), NLL / ECE after are of these out-of-fold probabilities, and the temperature
reported for Ensemble.load is the one fitted on the whole test split.
"""

import numpy as np
from scipy import optimize

from enstransfer_jax import metrics
from enstransfer_jax.analysis import tables
from enstransfer_jax.errors import UserError

N_BINS = 15
T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def reliability(probs, labels, n_bins=N_BINS):
  """{'lo', 'hi', 'count', 'confidence', 'accuracy'} per bin (NaN for empty bins)."""
  probs = np.asarray(probs, np.float64)
  conf = probs.max(-1)
  correct = probs.argmax(-1) == np.asarray(labels)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  count, mean_conf, acc = [], [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (conf > lo) & (conf <= hi)
    count.append(int(sel.sum()))
    mean_conf.append(float(conf[sel].mean()) if sel.any() else float('nan'))
    acc.append(float(correct[sel].mean()) if sel.any() else float('nan'))
  return {'lo': edges[:-1], 'hi': edges[1:], 'count': np.asarray(count),
          'confidence': np.asarray(mean_conf), 'accuracy': np.asarray(acc)}


def _log(probs):
  return np.log(np.clip(np.asarray(probs, np.float64), _EPS, None))


def tempered_nll(probs, labels, temperature):
  """Mean -log softmax(log(probs) / T)[label], computed with log-sum-exp."""
  z = _log(probs) / float(temperature)
  m = z.max(-1, keepdims=True)
  log_norm = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
  return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(probs, labels, bounds=T_BOUNDS):
  """argmin_T NLL(metrics.temper(probs, T), labels) over T in `bounds`."""
  labels = np.asarray(labels)
  if len(labels) == 0:
    raise UserError('fitting a temperature needs at least one labelled example')
  res = optimize.minimize_scalar(lambda log_t: tempered_nll(probs, labels, np.exp(log_t)),
                                 bounds=(np.log(bounds[0]), np.log(bounds[1])),
                                 method='bounded', options={'xatol': 1e-5})
  return float(np.exp(res.x))


def cross_fitted(probs, labels, folds=2, seed=0):
  """Out-of-fold tempered probabilities and the temperature of each fold.

  Stratified folds (scikit-learn, `seed`); each fold is tempered with the T fitted on the rest.
  """
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  probs, labels = np.asarray(probs), np.asarray(labels)
  counts = np.bincount(labels)
  splitter = (model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
              if counts[counts > 0].min() >= folds else
              model_selection.KFold(folds, shuffle=True, random_state=seed))
  out, temps = np.zeros(probs.shape, np.float64), []
  for fit_idx, apply_idx in splitter.split(probs, labels):
    t = fit_temperature(probs[fit_idx], labels[fit_idx])
    out[apply_idx] = metrics.temper(probs[apply_idx], t)
    temps.append(t)
  return out, temps


def _scores(probs, labels):
  return {'nll': metrics.nll(probs, labels), 'ece': metrics.ece(probs, labels),
          'acc': metrics.accuracy(probs, labels)}


def calibrate(fit_probs, fit_labels, eval_probs=None, eval_labels=None):
  """Temperature scaling of ensemble probabilities (see the module docstring).

  fit_probs: the ensemble's (mean) probabilities on the data T is fitted on. Without eval data
  (use_test=True) the before/after figures are of 2-fold cross-fitting on the fit data.
  Returns ({'temperature', 'method', 'examples', 'before': {nll, ece, acc}, 'after': {...}},
  tempered probabilities the 'after' figures are of, their labels).
  """
  t = fit_temperature(fit_probs, fit_labels)
  if eval_probs is None:
    after, folds = cross_fitted(fit_probs, fit_labels)
    return {'temperature': t, 'method': 'test-time 2-fold cross-validation on the test split',
            'fold_temperatures': folds, 'examples': len(fit_labels),
            'before': _scores(fit_probs, fit_labels),
            'after': _scores(after, fit_labels)}, after, fit_labels
  after = metrics.temper(eval_probs, t)
  return {'temperature': t, 'method': 'fitted on the validation split, measured on the test '
          'split', 'examples': len(eval_labels), 'before': _scores(eval_probs, eval_labels),
          'after': _scores(after, eval_labels)}, after, eval_labels


def run_calibration(config, probs, labels, member_probs_fn):
  """The analysis's calibration section from the saved probabilities of a run.

  probs: the members' saved probabilities on the run's evaluation split, labels its labels.
  member_probs_fn(images) -> [K, N, C]: the members on other images (used with use_test=False
  to score the official test split). Returns {'reliability': {curve name: bins}, 'scaling':
  calibrate's dict}; the curves are the ensemble and member 1 on the evaluation split and the
  tempered ensemble on the data the 'after' figures are of.
  """
  mean = np.mean(np.asarray(probs, np.float64), axis=0)
  curves = {'ensemble': reliability(mean, labels), 'member 1': reliability(probs[0], labels)}
  if config.get('use_test', True):
    scaling, after, after_labels = calibrate(mean, labels)
  else:
    from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
    test_config = config.copy_and_resolve_references()
    with test_config.unlocked():
      test_config.use_test = True
    test = datasets.load_dataset(test_config)
    test_mean = np.mean(np.asarray(member_probs_fn(test.test_images), np.float64), axis=0)
    scaling, after, after_labels = calibrate(mean, labels, test_mean, test.test_labels)
  curves['ensemble, temperature-scaled'] = reliability(after, after_labels)
  return {'reliability': curves, 'scaling': scaling}


def write_files(res, out):
  """calibration.csv, calibration.json (the temperature), reliability.csv and reliability.png
  in `out`. Returns {file name: path}."""
  import os  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  p = lambda name: os.path.join(out, name)
  s = res['scaling']
  rows = [{'ensemble': when, 'temperature': 1.0 if when == 'before' else s['temperature'],
           **s[when]} for when in ('before', 'after')]
  bins = [{'curve': name, 'lo': float(c['lo'][b]), 'hi': float(c['hi'][b]),
           'count': int(c['count'][b]), 'confidence': float(c['confidence'][b]),
           'accuracy': float(c['accuracy'][b])}
          for name, c in res['reliability'].items() for b in range(len(c['lo']))]
  return {
      'calibration.csv': tables.write_csv(p('calibration.csv'), rows,
                                          ['ensemble', 'temperature', 'nll', 'ece', 'acc']),
      'calibration.json': tables.write_json(p('calibration.json'), s),
      'reliability.csv': tables.write_csv(p('reliability.csv'), bins),
      'reliability.png': plots.reliability(p('reliability.png'), res['reliability'])}


def report_lines(res, files):
  """The report's 'Calibration' section (Markdown lines)."""
  s = res['scaling']
  rows = [{'ensemble': 'as trained', **s['before']},
          {'ensemble': f"temperature {s['temperature']:.3f}", **s['after']}]
  where = ('T fitted by 2-fold cross-validation on the test split (each half tempered with the '
           'T fitted on the other half; the members were trained on the whole training split, '
           f"so none of it is held out); fold temperatures "
           f"{', '.join(f'{t:.3f}' for t in s['fold_temperatures'])}, the whole split "
           f"{s['temperature']:.3f}" if 'fold_temperatures' in s else
           'T fitted on the validation split (the run used use_test=False), measured on the '
           'test split')
  md = ['## Calibration', '',
        'Temperature scaling of the ensemble: softmax(log(mean of the members\' probabilities)'
        f" / T), T minimising the NLL. {where}; {s['examples']} examples. "
        f"`Ensemble.load(workdir, temperature={s['temperature']:.3f})` or `predict "
        f"--temperature {s['temperature']:.3f}` applies it (also in calibration.json).", '',
        tables.markdown_table(rows, [('ensemble', 'ensemble'), ('acc', 'acc (%)'),
                                     ('nll', 'NLL'), ('ece', 'ECE')],
                              {'ensemble': str, 'acc': tables.pct}), '']
  if 'reliability.png' in files:
    md += ['Reliability diagrams (15 confidence bins; the ensemble and member 1 on the '
           'evaluation split, the tempered ensemble where the NLL after scaling is measured):',
           '', '![reliability diagrams](reliability.png)', '']
  return md
