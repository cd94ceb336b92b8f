"""Out-of-distribution detection with the ensemble's uncertainty.

In-distribution (ID) examples are the run's evaluation split (its saved probabilities); the
out-of-distribution (OOD) ones are the test split of another dataset or of other classes,
`DATASET[:CLASSES]` (e.g. 'digits:0,1,2,3,4': the digits 0-4 the quickstart pre-trained on,
OOD for members fine-tuned on 5-9). Each example gets uncertainty scores (higher = more
likely OOD) from the members' probabilities p_k [K, N, C] (metrics.uncertainty):

  entropy             H(mean_k p_k), the ensemble's predictive entropy
  mutual_information  H(mean_k p_k) - mean_k H(p_k), the members' disagreement
  expected_entropy    mean_k H(p_k), the mean member's entropy
  member1_entropy     H(p_1), a single model, for comparison
(natural log). AUROC and AUPR (average precision) treat OOD as the positive class and are
computed with scikit-learn; 0.5 AUROC is chance, 1.0 perfect separation.
"""

import numpy as np

from enstransfer_jax import metrics
from enstransfer_jax.analysis import tables
from enstransfer_jax.errors import UserError

SCORES = ('entropy', 'mutual_information', 'expected_entropy', 'member1_entropy')


def auroc(in_scores, out_scores):
  """Area under the ROC curve of telling OOD (positive) from ID by a higher score."""
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top
  y, s = _stack(in_scores, out_scores)
  return float(sk.roc_auc_score(y, s))


def aupr(in_scores, out_scores):
  """Average precision with OOD as the positive class (scikit-learn)."""
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top
  y, s = _stack(in_scores, out_scores)
  return float(sk.average_precision_score(y, s))


def _stack(in_scores, out_scores):
  in_scores, out_scores = np.ravel(in_scores), np.ravel(out_scores)
  if not len(in_scores) or not len(out_scores):
    raise UserError(f'OOD detection needs both in- and out-of-distribution examples, got '
                    f'{len(in_scores)} and {len(out_scores)}')
  y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
  return y, np.concatenate([in_scores, out_scores])


def parse_spec(spec):
  """'DATASET[:C1,C2,...]' -> (dataset, (classes...)); () = every class."""
  name, _, classes = str(spec).partition(':')
  name = name.strip().lower()
  if not name:
    raise UserError(f'--ood {spec!r}: give DATASET or DATASET:CLASSES, e.g. digits:0,1,2,3,4')
  try:
    subset = tuple(int(c) for c in classes.split(',') if c.strip()) if classes else ()
  except ValueError:
    raise UserError(f'--ood {spec!r}: classes must be integers separated by commas, e.g. '
                    'digits:0,1,2,3,4') from None
  return name, subset


def load_ood_images(config, spec):
  """(uint8 images, description, notes) of the test split of `spec` (see parse_spec)."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  name, subset = parse_spec(spec)
  ood_config = config.copy_and_resolve_references()
  with ood_config.unlocked():
    ood_config.dataset, ood_config.class_subset, ood_config.use_test = name, subset, True
  data = datasets.load_dataset(ood_config)
  notes = []
  if name == str(config.dataset).lower():
    ours = set(config.get('class_subset') or ()) or None  # None: every class
    theirs = set(subset) or None
    if ours is None or theirs is None:
      overlap = ours or theirs or 'all'
    else:
      overlap = ours & theirs
    if overlap:
      shown = overlap if overlap == 'all' else ','.join(map(str, sorted(overlap)))
      notes.append(f'OOD set {spec} shares classes with the training data ({shown}): it is '
                   'not out of distribution.')
  what = f"{name} test split, classes {','.join(map(str, subset)) if subset else 'all'}"
  return data.test_images, what, notes


def ood_results(in_member_probs, out_member_probs):
  """{'rows': [{score, auroc, aupr, mean_in, mean_out}], 'scores': {name: (in, out)}}."""
  s_in, s_out = metrics.uncertainty(in_member_probs), metrics.uncertainty(out_member_probs)
  rows = [{'score': k, 'auroc': auroc(s_in[k], s_out[k]), 'aupr': aupr(s_in[k], s_out[k]),
           'mean_in': float(np.mean(s_in[k])), 'mean_out': float(np.mean(s_out[k]))}
          for k in SCORES]
  return {'rows': rows, 'scores': {k: (s_in[k], s_out[k]) for k in SCORES},
          'in_examples': len(s_in['entropy']), 'out_examples': len(s_out['entropy'])}


def run_ood(config, probs, member_probs_fn, spec):
  """The analysis's OOD section: saved ID probabilities [K, N, C] against `spec`'s images."""
  images, what, notes = load_ood_images(config, spec)
  res = ood_results(np.asarray(probs), member_probs_fn(images))
  res.update(spec=spec, dataset=what, notes=notes)
  return res


def write_files(res, out):
  """ood.csv and ood_hist.png in `out`; drops the per-example scores from `res` (they would
  bloat analysis.json). Returns {file name: path}."""
  import os  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  scores = res.pop('scores')
  return {
      'ood.csv': tables.write_csv(os.path.join(out, 'ood.csv'), res['rows'],
                                  ['score', 'auroc', 'aupr', 'mean_in', 'mean_out']),
      'ood_hist.png': plots.ood_histograms(
          os.path.join(out, 'ood_hist.png'), scores,
          f"in distribution ({res['in_examples']}) vs {res['spec']} ({res['out_examples']})")}


def report_lines(res, files):
  """The report's 'Out-of-distribution detection' section (Markdown lines)."""
  names = {'entropy': 'ensemble entropy', 'mutual_information': 'mutual information',
           'expected_entropy': 'mean member entropy', 'member1_entropy': 'member 1 entropy'}
  rows = [{**r, 'score': names.get(r['score'], r['score'])} for r in res['rows']]
  md = ['## Out-of-distribution detection', '',
        f"In distribution: the {res['in_examples']} test examples of the run; OOD: "
        f"{res['out_examples']} images of {res['spec']} ({res['dataset']}). Higher score = "
        'more likely OOD; AUROC and AUPR (average precision, OOD positive) with '
        'scikit-learn.', '']
  md += [f'- {n}' for n in res.get('notes', [])] + ([''] if res.get('notes') else [])
  md += [tables.markdown_table(rows, [('score', 'score'), ('auroc', 'AUROC'), ('aupr', 'AUPR'),
                                      ('mean_in', 'mean (ID)'), ('mean_out', 'mean (OOD)')],
                               {'score': str}), '']
  if 'ood_hist.png' in files:
    md += ['![OOD score histograms](ood_hist.png)', '']
  return md
