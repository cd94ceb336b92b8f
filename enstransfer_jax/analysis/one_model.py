"""The ensemble in one network: what each way of shipping one model costs against the ensemble.

Rows, all on the run's evaluation split:
  ensemble        the mean of the K members' probabilities (K forward passes per image)
  uniform soup    the members' parameters averaged, BN statistics recomputed (soup.py)
  greedy soup     soup.greedy_soup over the held-out split below, BN recomputed the same way
  distilled       the student of `python -m enstransfer_jax.distill WORKDIR`, when
                  WORKDIR/distill holds a finished one (its saved test probabilities)
  member 1        the single fine-tuned model
Columns: accuracy (the run's metric), NLL, ECE, Brier; NLL / ECE after temperature scaling
(calibration.calibrate: T fitted by 2-fold cross-validation on the evaluation split, the same
rule for every row); selective prediction (selective.py: AURC, E-AURC, the risk at 90%
coverage); with --ood, the AUROC of the predictive entropy against the OOD set (ood.py; for
the ensemble its entropy row, for member 1 its member1_entropy row); networks evaluated per
image (K or 1).

Held-out data of the greedy soup: with use_test=False the run's evaluation split IS its
validation split, so the soup is chosen and measured on the same images (said in the report);
with use_test=True a stratified 10% of the training split (datasets.stratified_split, seed 42),
which the members trained on, so the choice is made on data they have seen.

Both soups are written as one-member work dirs (out/uniform_soup, out/greedy_soup), which
`Ensemble.load`, `predict` and `analyze` read like any run.
"""

import os

import numpy as np

from enstransfer_jax import checkpoints, distill, evaluator, metrics, models, rundir
from enstransfer_jax.analysis import calibration, ood, selective, soup, tables
from enstransfer_jax.training import workdir as wd

DISTILL_DIR = distill.DEFAULT_DIR  # WORKDIR/distill: the distilled student
HELD_OUT_FRACTION = 0.1


def held_out(config, data):
  """(images, labels, description) the greedy soup is chosen on (see the module docstring)."""
  if not config.get('use_test', True):
    return (data.test_images, data.test_labels,
            f'the run\'s validation split ({len(data.test_labels)} images; use_test=False, '
            'so the soup is chosen and measured on the same images)')
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  n = max(int(round(HELD_OUT_FRACTION * len(data.train_labels))),
          len(np.unique(data.train_labels)))
  _, idx = datasets.stratified_split(data.train_labels, n)
  return (data.train_images[idx], data.train_labels[idx],
          f'a stratified {100 * HELD_OUT_FRACTION:g}% of the training split ({len(idx)} '
          'images, seed 42; use_test=True leaves no validation split, and the members trained '
          'on these images)')


def write_model_dir(path, workdir, variables, probs, labels, metric, what):
  """A one-member work dir holding `variables` (read by Ensemble.load / predict / analyze)."""
  run, out = rundir.RunDir(workdir), rundir.RunDir(path)
  info = run.run_info()
  info = {**info, 'name': f"{info.get('name', 'run')} {what}", 'derived_from': workdir,
          'derived': what}
  os.makedirs(path, exist_ok=True)
  config = run.read_json(rundir.CONFIG)
  wd.write_json(out.file(rundir.CONFIG), config)
  wd.write_json(out.file(rundir.RUN_INFO), info)
  wd.save_npy(out.file(rundir.TEST_LABELS), np.asarray(labels, np.int32))
  desc = checkpoints.describe(variables)
  arch = desc.get('architecture') or info.get('model')
  wd.save_member(path, 1, variables, probs, {
      'arch': arch, 'member': 1, 'num_classes': int(desc['num_classes']), 'source': workdir,
      'derived': what, **({'image_size': int(config['image_size'])}
                          if arch and models.is_swin(arch) else {})})
  summary = metrics.ensemble_summary([np.asarray(probs, np.float32)], labels, metric)
  wd.write_json(out.file(rundir.SUMMARY), {**summary, 'name': info['name'], 'workdir': path})
  return path


def load_student(workdir, labels):
  """(variables, saved test probabilities) of WORKDIR/distill's student, or None."""
  path = os.path.join(workdir, DISTILL_DIR)
  student = rundir.RunDir(path)
  if not student.finished:
    return None
  saved = student.test_labels()
  if not np.array_equal(saved, labels):
    raise ValueError(f'{path} was distilled on another evaluation split than {workdir}; '
                     f'distill again: python -m enstransfer_jax.distill {workdir}')
  _, variables = student.member_variables(1)
  return ({'params': variables['params'], 'batch_stats': variables['batch_stats']},
          student.member_probs(1))


def _row(name, networks, probs, labels, score):
  cal, _, _ = calibration.calibrate(probs, labels)
  sel = selective.summary(probs, labels)
  return {'model': name, 'networks': networks, 'acc': score(probs, labels),
          'nll': metrics.nll(probs, labels), 'ece': metrics.ece(probs, labels),
          'brier': metrics.brier(probs, labels), 'nll_tempered': cal['after']['nll'],
          'ece_tempered': cal['after']['ece'], 'temperature': cal['temperature'],
          **{k: sel[k] for k in ('aurc', 'e_aurc', 'risk_at_90')},
          'curve': (sel['coverage'], sel['risk'])}


def _probs_in_shape(ev, variables, images, n_test):
  """ev.probs on `images` padded (last image repeated) to the batch shape of the test split's
  pass, so the compiled program is reused instead of compiled again for another length."""
  n, target = len(images), min(ev.batch_size, n_test)
  if n >= target:
    return ev.probs(variables, images)
  pad = np.concatenate([images, np.repeat(images[-1:], target - n, 0)])
  return ev.probs(variables, pad)[:n]


def run(res, config, workdir, ev, member_vars, probs, labels, data, bn, score, ood_spec, out):
  """The one-model section: res['soup'] (uniform), res['one_model']; files into `out`."""
  k = len(member_vars)
  variables = [{'params': v['params'], 'batch_stats': v['batch_stats']} for v in member_vars]
  recompute = lambda v: ev.recompute_bn(v, bn)
  held_x, held_y, held_what = held_out(config, data)
  held_probs = lambda v: _probs_in_shape(ev, v, held_x, len(labels))
  held_score = lambda v: score(held_probs(recompute(v)), held_y)
  member_held = [score(held_probs(v), held_y) for v in variables]
  chosen, steps = soup.greedy_soup(variables, held_score, member_held)
  uniform = recompute(soup.uniform_soup(variables))
  greedy = uniform if len(chosen) == k else recompute(
      soup.uniform_soup([variables[i] for i in chosen]))
  up = ev.probs(uniform, data.test_images)
  gp = up if greedy is uniform else ev.probs(greedy, data.test_images)
  res['soup'] = {'acc': score(up, labels), 'nll': metrics.nll(up, labels),
                 'ece': metrics.ece(up, labels), 'brier': metrics.brier(up, labels),
                 'bn_examples': len(bn)}
  ens = np.mean(np.asarray(probs, np.float64), axis=0)
  models = {'ensemble': (k, ens, None), 'uniform soup': (1, up, uniform),
            'greedy soup': (1, gp, greedy)}
  student = load_student(workdir, labels)
  if student is not None:
    models['distilled'] = (1, student[1], student[0])
  models['member 1'] = (1, np.asarray(probs[0]), variables[0])
  rows = [_row(name, n, p, labels, score) for name, (n, p, _) in models.items()]
  if ood_spec:
    images, _, _ = ood.load_ood_images(config, ood_spec)
    for r, (name, (_, p, v)) in zip(rows, models.items()):
      if v is None:  # the ensemble: its members on the OOD images
        out_probs = np.mean(ev.member_probs(evaluator.stack(variables), images), axis=0)
      else:
        out_probs = ev.probs(v, images)
      r['ood_auroc'] = ood.auroc(metrics.entropy(p), metrics.entropy(out_probs))
  files = write_files(rows, out)
  files.update({
      f'{name}/': write_model_dir(os.path.join(out, name), workdir, v, p, labels,
                                  res['metric'], name.replace('_', ' '))
      for name, v, p in (('uniform_soup', uniform, up), ('greedy_soup', greedy, gp))})
  res['one_model'] = {
      'rows': rows, 'held_out': held_what, 'held_out_examples': len(held_y),
      'member_held_out': member_held, 'bn_examples': len(bn), 'ood': ood_spec or None,
      'greedy_members': [i + 1 for i in chosen],
      'greedy_steps': [{**s, 'member': s['member'] + 1} for s in steps],
      'student': os.path.join(workdir, DISTILL_DIR) if student is not None else None}
  res.setdefault('uncertainty_files', {}).update(files)


COLUMNS = [('model', 'model'), ('networks', 'networks / image'), ('acc', 'acc (%)'),
           ('nll', 'NLL'), ('ece', 'ECE'), ('nll_tempered', 'NLL, T-scaled'),
           ('ece_tempered', 'ECE, T-scaled'), ('aurc', 'AURC'), ('e_aurc', 'E-AURC'),
           ('risk_at_90', 'risk @ 90% coverage'), ('ood_auroc', 'OOD AUROC (entropy)')]


def write_files(rows, out):
  """one_model.csv, risk_coverage.csv and risk_coverage.png; the curves leave `rows`."""
  from enstransfer_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  curves = {r['model']: r.pop('curve') for r in rows}
  p = lambda name: os.path.join(out, name)
  files = {'one_model.csv': tables.write_csv(p('one_model.csv'), rows,
                                             [c for c, _ in COLUMNS] + ['brier', 'temperature']),
           'risk_coverage.csv': tables.write_csv(p('risk_coverage.csv'), [
               {'model': name, 'coverage': float(c), 'risk': float(r)}
               for name, (cov, risk) in curves.items() for c, r in zip(cov, risk)])}
  fig, ax = plots.plt.subplots(figsize=(5, 4))
  for name, (cov, risk) in curves.items():
    ax.plot(cov, risk, label=name)
  ax.set_xlabel('coverage')
  ax.set_ylabel('risk (error rate of the answered)')
  ax.set_title('Selective prediction')
  ax.legend()
  plots._save(fig, p('risk_coverage.png'))  # pylint: disable=protected-access
  files['risk_coverage.png'] = p('risk_coverage.png')
  return files


def report_lines(r, files):
  """The report's 'One network instead of the ensemble' section (Markdown lines)."""
  cols = [c for c in COLUMNS if c[0] != 'ood_auroc' or r['ood']]
  steps = ', '.join(f"{s['member']} ({tables.pct(s['score'])}%"
                    f"{'' if s['added'] else ', left out'})" for s in r['greedy_steps'])
  md = ['## One network instead of the ensemble', '',
        f"Greedy soup (members by held-out score, each kept when the soup's held-out score "
        f"does not drop; BN statistics recomputed on {r['bn_examples']} training images) held "
        f"out on {r['held_out']}: members tried {steps}; soup of members "
        f"{', '.join(map(str, r['greedy_members']))}. Members alone on the held-out data: "
        f"{', '.join(tables.pct(a) + '%' for a in r['member_held_out'])}.", '',
        'On the evaluation split; T-scaled: temperature fitted by 2-fold cross-validation on '
        'it; AURC: area under the risk-coverage curve (confidence = max probability), E-AURC '
        'its excess over the best ordering of the same errors'
        + (f"; OOD AUROC: predictive entropy against {r['ood']}" if r['ood'] else '') + '. '
        + (f"Distilled student: {r['student']}." if r['student'] else
           'No distilled student (python -m enstransfer_jax.distill WORKDIR makes one).'), '',
        tables.markdown_table(r['rows'], cols, {'model': str, 'networks': str,
                                                'acc': tables.pct}), '',
        'Both soups are saved as runs of one member: [uniform_soup/](uniform_soup/), '
        '[greedy_soup/](greedy_soup/) (`Ensemble.load`, `predict`, `analyze` read them).', '']
  if 'risk_coverage.png' in files:
    md += ['![risk-coverage curves](risk_coverage.png)', '']
  return md
