"""analyze_run(workdir, out, options): every table and figure of one finished run.

Order of work (each model's forward passes happen once per purpose):
  1. tables from the saved test probabilities (never recomputed): per member and per
     ensemble size accuracy / NLL / ECE / Brier, the pairwise diversity matrix;
  2. features of the first `subset` test examples, once per model; linear CKA, MSE, RTD,
     RTD-Lite and the RTD metric of each of the five maps between member 1 and member i and
     between the pre-trained model and member i (only the features of member 1 and of the
     pre-trained models stay in memory);
  3. per-stage weight distances from the pre-trained model, cosines of the members' updates;
  4. the uniform soup with BN statistics recomputed on training data;
  5. loss / accuracy along lines (member pairs, pre-trained -> member) and on the plane
     through members 1..3, BN statistics recomputed at every point;
     (a Swin has LayerNorm only, no statistics: 4 and 5 average the parameters and
     recompute nothing)
  6. the learning-rate schedule; PNG plots, CSV / JSON tables and report.md;
  7. calibration (reliability diagrams, temperature scaling; calibration.py) and, with
     Options.ood, out-of-distribution detection (ood.py), all members in one vmapped pass.
A pre-trained head with another number of classes than the members' is compared only where
comparable: features and backbone weights; its interpolation end point gets the member's head.
Maps: LAYERS (layer1..layer4, pooled) for a ResNet, SWIN_LAYERS (layers.0..layers.3, the
stage outputs, and pooled) for a Swin; slots a model lacks (a 2-stage Swin) are left out.
"""

import dataclasses
import itertools
import os

import jax
import numpy as np
from tqdm import tqdm

from enstransfer_jax import checkpoints, evaluator, metrics, models, rundir, schedules
from enstransfer_jax.analysis import basin, one_model, outputs, similarity, weights
from enstransfer_jax.analysis import calibration, ood, study
from enstransfer_jax.evaluator import Evaluator
from enstransfer_jax.data import batches, datasets
from enstransfer_jax.errors import UserError

LAYERS = ('layer1', 'layer2', 'layer3', 'layer4', 'pooled')
SWIN_LAYERS = ('layers.0', 'layers.1', 'layers.2', 'layers.3', 'pooled')


def layer_names(variables):
  """The names of the five feature slots of a model with these variables."""
  return SWIN_LAYERS if models.head_name(variables) == 'head' else LAYERS


@dataclasses.dataclass
class Options:
  subset: int = 512  # test examples for the representation comparisons (the first ones)
  rtd_points: int = similarity.RTD_POINTS  # examples of the subset used for RTD; 0 = no RTD
  rtd_batch: int = 500  # RTD metric (rtd_metric.py): examples per random subset; 0 = none
  rtd_trials: int = 10  # RTD metric: subsets averaged over (one when subset <= rtd_batch)
  line_points: int = 11  # alphas 0, 0.1, ..., 1
  grid: int = 7  # plane: grid x grid points; 0 = no plane
  margin: float = 0.2
  bn_examples: int = 0  # training images for BN recomputation; 0 = the whole train split
  eval_examples: int = 0  # test images scored along lines and on the plane; 0 = all
  # (both drawn once with seed 0 when smaller than the split: pipeline.sample_indices)
  soup: bool = True
  calibration: bool = True  # reliability diagrams, temperature scaling (calibration.py)
  ood: str = ''  # 'DATASET[:CLASSES]': out-of-distribution detection against it (ood.py)
  basin: bool = True
  subensembles: int = 5  # K of the sub-ensemble study (study.py, Figure 6.1); 0 = none
  progress: bool = True

  def check(self):
    if self.subensembles == 1 or self.subensembles < 0:
      raise UserError(f'subensembles must be 0 (no study) or K >= 2, got {self.subensembles}')
    for name in ('subset', 'line_points'):
      if getattr(self, name) < 2:
        raise UserError(f'{name} must be >= 2, got {getattr(self, name)}')
    if self.rtd_trials < 1:
      raise UserError(f'rtd_trials must be >= 1, got {self.rtd_trials}')
    for name in ('rtd_points', 'rtd_batch', 'grid', 'bn_examples', 'eval_examples'):
      if getattr(self, name) < 0:
        raise UserError(f'{name} must be >= 0, got {getattr(self, name)}')
    if self.grid == 1:
      raise UserError('grid must be 0 (no plane) or >= 2')


def load_run(workdir):
  """(config, run_info, labels, member ids, [probs]) of a finished work dir."""
  run = rundir.RunDir(workdir).existing()
  config, info, labels = run.config(), run.run_info(), run.test_labels()
  ids = run.member_ids(rundir.PROBS, required=True)
  probs = [run.member_probs(i) for i in ids]
  for i, p in zip(ids, probs):
    if p.shape[0] != len(labels):
      raise UserError(f'member {i} has probabilities of {p.shape[0]} examples but '
                      f'test_labels.npy has {len(labels)}; the work dir is inconsistent')
  return config, info, labels, ids, probs


def prediction_tables(probs, labels, metric):
  score = metrics.METRICS[metric]
  members = [{'member': i + 1, 'acc': score(p, labels), 'nll': metrics.nll(p, labels),
              'ece': metrics.ece(p, labels), 'brier': metrics.brier(p, labels)}
             for i, p in enumerate(probs)]
  ens = metrics.ensemble_summary(probs, labels, metric)
  return {'members': members, 'ensembles': ens['ensembles'],
          'mean_member_acc': ens['mean_member_acc'], 'diversity': ens['diversity'],
          'diversity_matrix': metrics.pairwise_diversity(probs, labels)}


def load_pretrained_models(info, member_vars, workdir, notes):
  """Per member: its pre-trained variables with the member's head where heads differ, or None."""
  given = info.get('pretrained') or ''
  paths = list(given) if isinstance(given, (list, tuple)) else [given] * len(member_vars)
  if not any(paths):
    notes.append('Trained from scratch: no pre-trained model to compare with.')
    return [None] * len(member_vars)
  if len(paths) < len(member_vars):
    notes.append(f'run_info lists {len(paths)} pre-trained checkpoints for {len(member_vars)} '
                 'members: pre-trained comparisons skipped.')
    return [None] * len(member_vars)
  loaded, out = {}, []
  for path, mv in zip(paths, member_vars):
    path = rundir.RunDir(workdir).resolve(path)
    if path not in loaded:
      try:
        loaded[path] = checkpoints.load_pretrained(path)[1]
      except (FileNotFoundError, ValueError) as e:
        notes.append(f'Pre-trained checkpoint {path} not readable ({e}): comparisons with it '
                     'skipped.')
        loaded[path] = None
    pre = loaded[path]
    if pre is None:
      out.append(None)
      continue
    head = models.head_name(mv)
    backbone = [m for m in mv['params'] if m != head]
    if not all(m in pre['params'] and weights.same_shapes(pre['params'][m], mv['params'][m])
               for m in backbone):
      notes.append(f'Pre-trained model {path} has another backbone than the members: '
                   'comparisons with it skipped.')
      out.append(None)
      continue
    if not weights.same_shapes(pre['params'][head], mv['params'][head]):
      note = (f"The pre-trained head ({pre['params'][head]['bias'].shape[0]} classes) differs "
              f"from the members' ({mv['params'][head]['bias'].shape[0]}): features and "
              'backbone weights are compared; the pre-trained end point of each line uses '
              "that member's head.")
      if note not in notes:
        notes.append(note)
      pre = {'params': {**pre['params'], head: mv['params'][head]},
             'batch_stats': pre['batch_stats'], 'head_replaced': True, 'path': path}
    else:
      pre = {**pre, 'head_replaced': False, 'path': path}
    out.append(pre)
  return out


def _vars(v):
  return {'params': v['params'], 'batch_stats': v['batch_stats']}


def similarity_rows(ev, member_vars, pres, images, opts):
  """Rows {member, reference, layer, cka, mse, rtd}; features computed once per model.

  Only the slots the model has (a feature map that is None is skipped)."""
  bar = dict(disable=not opts.progress, leave=False)
  ref_feats, rows = {}, []
  names = layer_names(member_vars[0])

  def feats_of(v):
    f = ev.features(_vars(v), images)
    return f, [None if x is None else similarity.centered_gram(x) for x in f]

  pre_cache = {}
  for i, mv in enumerate(tqdm(member_vars, desc='representations', **bar), start=1):
    cur = feats_of(mv)
    if i == 1:
      ref_feats['member1'] = cur
    refs = [('member1', ref_feats['member1'])] if i > 1 else []
    if pres[i - 1] is not None:
      key = pres[i - 1]['path']
      if key not in pre_cache:
        pre_cache[key] = feats_of(pres[i - 1])
      refs.append(('pretrained', pre_cache[key]))
    for name, (rf, rg) in refs:
      for layer, x, gx, y, gy in zip(names, rf, rg, cur[0], cur[1]):
        if x is None or y is None:
          continue
        rows.append({'member': i, 'reference': name, 'layer': layer,
                     **similarity.compare(x, y, gram_x=gx, gram_y=gy,
                                          rtd_points=opts.rtd_points,
                                          with_rtd=opts.rtd_points > 0,
                                          rtd_trials=opts.rtd_trials,
                                          rtd_batch=opts.rtd_batch)})
  return rows


def weight_tables(member_vars, pres, diversity_matrix):
  """Stage distances, update cosines; a replaced pre-trained head (the member's) is left out."""
  head = models.head_name(member_vars[0])
  strip = lambda params, pre: ({k: v for k, v in params.items() if k != head}
                               if pre['head_replaced'] else params)
  members = [strip(mv['params'], pre) for mv, pre in zip(member_vars, pres)]
  pre_params = [strip(pre['params'], pre) for pre in pres]
  rows = []
  for i, (mp, pp) in enumerate(zip(members, pre_params), start=1):
    rows += [{'member': i, **r} for r in weights.stage_distances(mp, pp)]
  cos, modules = weights.update_cosines(members, pre_params)
  pairs = [{'member_i': i + 1, 'member_j': j + 1, 'update_cosine': float(cos[i, j]),
            'diversity': float(diversity_matrix[i, j])}
           for i, j in itertools.combinations(range(len(member_vars)), 2)]
  return rows, cos, modules, pairs


def sample_indices(total, n):
  """n of range(total) drawn once with a fixed seed (0), in increasing order; 0 = all."""
  if not n or n >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(0).choice(total, int(n), replace=False))


def has_batchnorm(variables):
  """Whether a model has BatchNorm statistics to recompute (a Swin, LayerNorm only, has not)."""
  return bool(jax.tree_util.tree_leaves(variables['batch_stats']))


def bn_images(member_vars, data, opts):
  """The training images BN statistics are recomputed on (none without BatchNorm)."""
  if not has_batchnorm(member_vars[0]):
    return data.train_images[:0]
  return data.train_images[sample_indices(len(data.train_images), opts.bn_examples)]


def basin_results(ev, member_vars, pres, data, opts, score):
  has_bn = has_batchnorm(member_vars[0])
  bn_sample = bn_images(member_vars, data, opts)
  idx = sample_indices(len(data.test_labels), opts.eval_examples)
  x, y = data.test_images[idx], data.test_labels[idx]
  recompute = lambda v: ev.recompute_bn(_vars(v), bn_sample)

  def evaluate(v):
    p = ev.probs(_vars(v), x)
    return {'loss': metrics.nll(p, y), 'acc': score(p, y)}

  ends = {i: evaluate(recompute(v)) for i, v in enumerate(
      tqdm(member_vars, desc='members, BN recomputed' if has_bn else 'members', leave=False,
           disable=not opts.progress),
      start=1)}
  lines, pre_ends = {}, {}
  for i, j in itertools.combinations(range(1, len(member_vars) + 1), 2):
    lines[f'member {i} - member {j}'] = basin.line(
        evaluate, _vars(member_vars[i - 1]), _vars(member_vars[j - 1]), opts.line_points,
        recompute=recompute, known={0.0: ends[i], 1.0: ends[j]}, progress=opts.progress,
        desc=f'line {i}-{j}')
  for i, pre in enumerate(pres, start=1):
    if pre is None:
      continue
    key = (pre['path'], i if pre['head_replaced'] else 0)
    known = {1.0: ends[i], **({0.0: pre_ends[key]} if key in pre_ends else {})}
    pts = basin.line(evaluate, _vars(pre), _vars(member_vars[i - 1]), opts.line_points,
                     recompute=recompute, known=known, progress=opts.progress,
                     desc=f'line pre-{i}')
    pre_ends[key] = {k: pts[0][k] for k in ('loss', 'acc')}
    lines[f'pretrained - member {i}'] = pts
  plane = None
  if opts.grid and len(member_vars) >= 3:
    plane = basin.plane(evaluate, *[_vars(v) for v in member_vars[:3]], grid=opts.grid,
                        margin=opts.margin, recompute=recompute, progress=opts.progress)
  return {'members_recomputed_bn': ends, 'lines': lines, 'plane': plane,
          'bn_examples': len(bn_sample), 'eval_examples': len(y)}


def uncertainty_sections(res, config, probs, labels, ev, member_vars, opts, out):
  """Calibration and OOD detection (calibration.py, ood.py) into res; their files into out."""
  stacked = evaluator.stack([_vars(v) for v in member_vars])
  member_probs = lambda images: ev.member_probs(stacked, images)
  files = {}
  if opts.calibration:
    res['calibration'] = calibration.run_calibration(config, probs, labels, member_probs)
    files.update(calibration.write_files(res['calibration'], out))
  if opts.ood:
    res['ood'] = ood.run_ood(config, probs, member_probs, opts.ood)
    files.update(ood.write_files(res['ood'], out))
  res['uncertainty_files'] = files


def analyze_run(workdir, out, opts):
  """Writes the analysis of one work dir into `out`; returns the results dict."""
  opts.check()
  config, info, labels, ids, probs = load_run(workdir)
  metric = info.get('metric', 'top1')
  notes = []
  if ids != list(range(1, len(ids) + 1)):
    notes.append(f'Members {ids} (not 1..K): tables number them 1..{len(ids)} in this order.')
  res = {'name': info.get('name', config.get('name', '')), 'workdir': os.path.abspath(workdir),
         'metric': metric, 'notes': notes, 'options': dataclasses.asdict(opts),
         **prediction_tables(probs, labels, metric)}
  os.makedirs(out, exist_ok=True)
  member_vars, arch = [], None
  for i in ids:
    arch, v = rundir.RunDir(workdir).member_variables(i)
    member_vars.append(v)
  desc = checkpoints.describe(member_vars[0])  # ResNet or Swin
  # BatchNorm statistics to recompute (soup, basin); a Swin (LayerNorm only) has none.
  res['batchnorm'] = has_batchnorm(member_vars[0])
  data = datasets.load_dataset(config)
  if not np.array_equal(data.test_labels, labels):
    raise UserError(f'the test split loaded from config.json differs from {workdir}/'
                    'test_labels.npy; the dataset changed since training')
  ev = Evaluator.from_config(config, desc['num_classes'], arch=arch, width=desc['width'],
                             progress=opts.progress)
  pres = load_pretrained_models(info, member_vars, workdir, notes)
  uncertainty_sections(res, config, probs, labels, ev, member_vars, opts, out)
  subset = data.test_images[:opts.subset]
  res['subset'] = len(subset)
  res['similarity'] = similarity_rows(ev, member_vars, pres, subset, opts)
  if all(p is not None for p in pres):
    res['weights'], cos, mods, res['weight_pairs'] = weight_tables(member_vars, pres,
                                                                   res['diversity_matrix'])
    res['update_cosine'], res['update_modules'] = cos, mods
  study.run_study(res, config, probs, labels, [v['params'] for v in member_vars],
                  opts.subensembles, opts.progress)
  res['uncertainty_files'].update(study.write_files(res, out))
  score = metrics.METRICS[metric]
  if opts.soup:  # the uniform and greedy soups beside the ensemble, the student (one_model.py)
    one_model.run(res, config, workdir, ev, member_vars, probs, labels, data,
                  bn_images(member_vars, data, opts), score, opts.ood, out)
  if opts.basin:
    res['basin'] = basin_results(ev, member_vars, pres, data, opts, score)
    if len(member_vars) < 3 and opts.grid:
      notes.append('Fewer than 3 members: no plane.')
  try:
    spe = batches.steps_per_epoch(config, len(data.train_labels))
    res['lr'], res['steps_per_epoch'] = schedules.lr_table(config, spe), spe
  except (ValueError, KeyError, AttributeError) as e:
    notes.append(f'Learning-rate schedule not tabulated: {e}')
  res['files'] = outputs.write_outputs(res, out)
  res['files'].update(res['uncertainty_files'])
  return res
