"""A run's work dir: its layout, and the one place that reads it.

  config.json              the resolved config
  run_info.json            name, model, width, num_classes, metric, dataset and the pre-trained
                           checkpoint(s) actually used (the quickstart's own pre-trained model)
  metrics.jsonl            one JSON object per logged event (train / eval / epoch / member ...)
  test_labels.npy          int32 [N_test]
  members/<i>/checkpoint/  orbax checkpoint of member i (params, batch_stats; readable by
                           enstransfer_jax.load_pretrained, so a member can seed a new run)
  members/<i>/test_probs.npy  float32 softmax probabilities [N_test, C]
  summary.json             per member and per ensemble size metrics, diversity; the mark of a
                           finished run, written last
  progress/                the progress checkpoint of a run in progress (training/resume.py)
  pretrain/                the quickstart's pre-training stage, a work dir of its own
  all_models/<i>/epoch_<e>/  member i at the end of global epoch e (save_all_models)
  analysis/, distill/      what analyze and distill write
  .lock                    while a run writes: its pid, host and start time

training/workdir.py writes these files (only the writing process: mesh.is_writer); every
reader of a run (training's resume and checks, analyze, predict, Ensemble.load, reproduce,
distill, the torch export) reads them through RunDir. A missing file is one line naming the
file; a damaged one is a UserError saying what to do.
"""

import importlib
import json
import os
import sys

import ml_collections
import numpy as np

from enstransfer_jax import checkpoints
from enstransfer_jax.errors import UserError

CONFIG, RUN_INFO, SUMMARY, METRICS = 'config.json', 'run_info.json', 'summary.json', 'metrics.jsonl'
TEST_LABELS, PROBS, CHECKPOINT = 'test_labels.npy', 'test_probs.npy', 'checkpoint'
# Config fields that may differ when a run is continued in the same work dir.
VOLATILE = ('overwrite', 'progress', 'wandb_mode', 'work_dir', 'compilation_cache_dir',
            'rtd_workers', 'data_workers', 'remat')
# What `overwrite` clears (config.json and run_info.json are rewritten).
OUTPUTS = (SUMMARY, METRICS, 'members', 'progress', 'pretrain', 'analysis', 'all_models')


def differences(old, new, prefix=''):
  """[(dotted field, value in old, value in new)] of the fields recorded in `old` (a run's
  config.json) whose value `new` changes, in sorted order; sections are compared field by
  field. Not compared: volatile fields, fields `old` does not record (added to the code since
  that run was made: it ran with their defaults) and fields `new` no longer has."""
  found = []
  for key in sorted(old):
    if (not prefix and key in VOLATILE) or key not in new:
      continue
    if isinstance(old[key], dict) and isinstance(new[key], dict):
      found += differences(old[key], new[key], f'{prefix}{key}.')
    elif old[key] != new[key]:
      found.append((prefix + key, old[key], new[key]))
  return found


def describe(difference):
  """'lr: 0.05 there, 0.1 here' for one entry of `differences`."""
  name, there, here = difference
  return f'{name}: {there!r} there, {here!r} here'


def configs_package(module=''):
  """The configs package at the repository root (or its `module`), also when the command runs
  from another directory."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)
  return importlib.import_module('configs' + (f'.{module}' if module else ''))


def base_config():
  """configs/base.py's defaults."""
  return configs_package('base').get_config()


def _put(node, values):
  with node.unlocked():
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        _put(node[key], value)
      else:
        node[key] = value


class RunDir:
  """The work dir at `path`: where each file of a run lies, and its readers."""

  def __init__(self, path):
    self.path = os.fspath(path)

  def file(self, *names):
    return os.path.join(self.path, *names)

  def member(self, i, *name):
    """members/<i>, or the file `name` in it ('checkpoint', 'test_probs.npy')."""
    return os.path.join(self.path, 'members', str(i), *name)

  def all_models(self, member, global_epoch):
    """save_all_models: member `member` at the end of global epoch `global_epoch` (1-based,
    the schedule's epoch over the whole run)."""
    return self.file('all_models', str(member), f'epoch_{global_epoch}')

  def resolve(self, path):
    """A path the run records (run_info.json's 'pretrained'): as given when it exists or is
    absolute, else relative to the work dir when it is there."""
    if path and not os.path.exists(path) and not os.path.isabs(path):
      return self.file(path) if os.path.exists(self.file(path)) else path
    return path

  def existing(self):
    """self, or FileNotFoundError when the directory is not there."""
    if not os.path.isdir(self.path):
      raise FileNotFoundError(f'work dir {self.path} does not exist')
    return self

  @property
  def finished(self):
    return os.path.isfile(self.file(SUMMARY))

  def started(self):
    """A finished member or a progress checkpoint: work that a changed config would lose."""
    members = self.file('members')
    return (os.path.isdir(self.file('progress')) or
            (os.path.isdir(members) and bool(os.listdir(members))))

  def read_json(self, name):
    """The JSON file `name` of the run; missing: FileNotFoundError, damaged: UserError."""
    path = self.file(name)
    if not os.path.isfile(path):
      what = 'a finished run' if name == SUMMARY else 'a work dir'
      raise FileNotFoundError(f'{path} is missing: {self.path} is not {what} written by '
                              'python main.py --config ...')
    with open(path) as f:
      try:
        return json.load(f)
      except ValueError as e:
        raise UserError(f'{path} is damaged (not JSON: {getattr(e, "msg", e)}, line '
                        f'{getattr(e, "lineno", "?")}); restore it, or delete it and run the '
                        'training command again to rewrite it') from None

  def config(self, defaults=False):
    """config.json as a ConfigDict; with `defaults`, over configs/base.py's defaults, so fields
    added to the code since the run was made get the defaults the run ran with."""
    saved = self.read_json(CONFIG)
    if not defaults:
      return ml_collections.ConfigDict(saved)
    config = base_config()
    _put(config, saved)
    return config

  def run_info(self):
    return self.read_json(RUN_INFO)

  def summary(self):
    return self.read_json(SUMMARY)

  def config_differences(self, config):
    """`differences` between config.json and `config` (a ConfigDict)."""
    return differences(self.read_json(CONFIG), json.loads(config.to_json_best_effort()))

  def member_ids(self, name=CHECKPOINT, required=False):
    """Sorted ids of the members/<i> that hold `name` ('checkpoint' or 'test_probs.npy');
    other entries (a member being written, temporary names) are not members. `required`:
    none is a UserError."""
    root = self.file('members')
    names = os.listdir(root) if os.path.isdir(root) else []
    ids = sorted(int(d) for d in names
                 if d.isdigit() and os.path.exists(os.path.join(root, d, name)))
    if required and not ids:
      raise UserError(f'{self.path} holds no finished member (members/<i>/{name}); train it '
                      'first')
    return ids

  def check_members(self, found, allow_partial=False):
    """Whether the members found (ids) are the whole run. A run without summary.json is
    unfinished; a finished run lacking a member of summary.json is damaged. Either is refused
    unless `allow_partial`; then the returned note says what is used ('' for a whole run)."""
    listed = ','.join(map(str, found)) or 'none'
    if not self.finished:
      if allow_partial:
        return f'partial run {self.path}: members {listed} (the run has not finished)'
      raise UserError(f'{self.path} holds an unfinished run (no summary.json; members {listed} '
                      'finished); run its training command again to finish it, or pass '
                      '--allow-partial to use the finished members')
    try:
      expected = [int(m['member']) for m in self.summary()['members']]
    except (KeyError, TypeError, ValueError):
      raise UserError(f'{self.file(SUMMARY)} is damaged (no member list); restore it, or '
                      'delete it and run the training command again') from None
    missing = [m for m in expected if m not in found]
    if not missing:
      return ''
    if allow_partial:
      return (f'partial run {self.path}: members {listed} of {",".join(map(str, expected))} '
              f'(missing {",".join(map(str, missing))})')
    raise UserError(f'member {",".join(map(str, missing))} of {self.path} is missing '
                    f'(summary.json lists {",".join(map(str, expected))}); pass --members '
                    f'{listed} to use the others (--allow-partial for analyze and the export), '
                    'or train the run again with --config.overwrite=True')

  def member_variables(self, i):
    """(architecture, variables) of member i's checkpoint."""
    return checkpoints.load_pretrained(self.member(i, CHECKPOINT))

  def member_probs(self, i):
    """Member i's saved test probabilities [N_test, C]; a damaged file is a UserError."""
    path = self.member(i, PROBS)
    try:
      return np.load(path)
    except (ValueError, EOFError) as e:
      raise UserError(f'{path} is damaged ({str(e).splitlines()[0][:100]}); run the training '
                      'command again with --config.overwrite=True to rewrite the run') from None

  def test_labels(self):
    path = self.file(TEST_LABELS)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} is missing; the run in {self.path} did not finish')
    return np.load(path)

  def events(self, event=None):
    """The records of metrics.jsonl (those of one `event`, e.g. 'train', if given), in file
    order; [] before the first one is written."""
    path = self.file(METRICS)
    if not os.path.exists(path):
      return []
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if event is None or r.get('event') == event]

  def cycle_epoch_seconds(self):
    """Median seconds between consecutive epochs of the same member in cycles 2..K (the first
    epoch of every member, which holds compilation, excluded); a stage of parallel members
    counts once per epoch. nan without cycles."""
    times = {}
    for e in self.events('epoch'):
      if e.get('member', 1) > 1:
        times.setdefault(e['member'], []).append(e['time'])
    gaps = [g for t in times.values() for g in np.diff(t)]
    return float(np.median(gaps)) if gaps else float('nan')

  def outputs(self):
    """The paths of the outputs that `overwrite` clears and that exist."""
    return [self.file(n) for n in OUTPUTS if os.path.lexists(self.file(n))]
