"""run_experiment(config, workdir): the whole experiment, from the config to summary.json.

The one entry point used by main.py, the tests and notebooks. In order:
  1. check the config, then read everything that can fail on the inputs (the dataset, the
     pre-trained checkpoints), before the work dir is created or touched;
  2. prepare the work dir (a finished run is returned as it is; a run in progress resumes);
  3. the quickstart's pre-training stage, when enabled (a run of its own in <workdir>/pretrain);
  4. every stage of the plan (stage.py), resuming from <workdir>/progress when it exists;
  5. summary.json from the members' saved test probabilities.
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np

from enstransfer_jax import losses, metrics, models, rundir, schedules
from enstransfer_jax.evaluator import Evaluator
from enstransfer_jax.data import batches, datasets
from enstransfer_jax.training import config_check, mesh, plan as plan_lib, resume
from enstransfer_jax.training import stage as stage_lib
from enstransfer_jax.training import starts as starts_lib
from enstransfer_jax.training import wandb_log
from enstransfer_jax.training import workdir as wd
from enstransfer_jax.errors import UserError


def enable_compilation_cache(path):
  """XLA's persistent compilation cache in `path` ('' leaves JAX's setting as it is)."""
  if not path:
    return
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def check_workdir(config, workdir):
  """Read-only: True when workdir holds this config's finished run; raises when it holds
  started work of another config."""
  run = rundir.RunDir(workdir)
  if config.overwrite or not os.path.exists(run.file(rundir.CONFIG)):
    return False
  diff = run.config_differences(config)
  if diff:
    if not run.started() and not run.finished:
      return False  # nothing trained yet: the new config takes the work dir over
    fge_only = all(d[0].startswith('fge_') for d in diff)  # what members 2..K train with
    raise UserError(f'work dir {workdir} holds a run with a different config '
                    f'({rundir.describe(diff[0])}); choose another --workdir or pass '
                    '--config.overwrite=True'
                    + (' (in another --workdir member 1 is retrained bit-identically and the '
                       'finished members here are kept)' if fge_only else ''))
  return run.finished


def prepare_workdir(config, workdir):
  """Creates the work dir (clearing old outputs on overwrite) and writes config.json."""
  if mesh.is_writer():
    if config.overwrite:
      for path in rundir.RunDir(workdir).outputs():
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    wd.write_json(rundir.RunDir(workdir).file(rundir.CONFIG),
                  json.loads(config.to_json_best_effort()))
  mesh.barrier('prepare_workdir')


def pretrain_config(config):
  """The quickstart's pre-training stage: a plain single model on pretrain.class_subset of
  pretrain.dataset (default: the fine-tuning dataset)."""
  p = config.copy_and_resolve_references()
  with p.unlocked():
    p.class_subset = tuple(config.pretrain.class_subset)
    if config.pretrain.dataset:
      p.dataset, p.train_per_class = config.pretrain.dataset, 0
    p.epochs, p.lr, p.scheduler = config.pretrain.epochs, config.pretrain.lr, 'cosine'
    p.ensemble, p.num_fge, p.ckpt, p.star_fge = 'sse', 1, '', False
    p.fmap_betas, p.wo_beta, p.prev_ce_beta, p.freeze_layers = (0.0,) * 5, 0.0, 0.0, ()
    p.pretrain.enabled = False
    p.wandb_mode = 'disabled'
    p.valid_freq = 0
  return p


@dataclasses.dataclass
class Run:
  """What the stages of one run share."""
  config: Any
  workdir: str
  data: Any
  model: Any
  arch: str
  log: Any
  starts: starts_lib.Starts
  evaluator: Evaluator
  steps_per_epoch: int
  progress: resume.Progress
  schedule: Dict[str, Any]  # schedules.step_tables
  # Compiled programs by what they are built from (the evaluator's key, the step's
  # step.StepSpec): runs that agree on it share them (the quickstart's two stages).
  programs: Dict[Any, Any] = dataclasses.field(default_factory=dict)
  last_opt_state: Optional[Any] = None

  def save_progress(self, state, s, epoch, batch):
    self.progress.save(state, stage=s, epoch=epoch, batch=batch,
                       lines=resume.count_lines(self.log.path))


def total_steps(config, data):
  return schedules.total_epochs(config) * batches.steps_per_epoch(config,
                                                                   len(data.train_labels))


def train_members(config, workdir, data, log, pretrained, programs=None, table_length=0):
  """Trains every stage of the plan, resuming from <workdir>/progress when it exists.
  `programs`: compiled programs shared with another run of this process, whose schedule
  tables have `table_length` steps."""
  programs = {} if programs is None else programs
  evaluator = Evaluator.from_config(config, data.num_classes, train=True)
  evaluator = programs.setdefault(('evaluator', evaluator.key), evaluator)
  model = evaluator.model
  spe = batches.steps_per_epoch(config, len(data.train_labels))
  run = Run(config=config, workdir=workdir, data=data, model=model,
            arch=models.canonical_name(config.model), log=log,
            starts=starts_lib.Starts(config, model, data.num_classes, pretrained),
            evaluator=evaluator, programs=programs,
            steps_per_epoch=spe,
            progress=resume.Progress(workdir, config.checkpoint_every_minutes),
            schedule=schedules.step_tables(config, spe, min_length=table_length))
  stages = plan_lib.make_plan(config)
  position = run.progress.position()
  # metrics.jsonl as the uninterrupted run had it at the resumed position (empty at the start:
  # lines of a run killed before its first save, or of another config, are dropped).
  resume.truncate_lines(log.path, 0 if position is None else position['lines'])
  if position is not None:
    for stage in stages[:position['stage']]:
      run.starts.load_finished(workdir, stage)
  previous = run.progress.install_signal_handlers()
  try:
    for s, stage in enumerate(stages):
      if position is not None and s < position['stage']:
        continue
      here = position if position is not None and s == position['stage'] else None
      stage_lib.train_stage(run, s, stage, here, stages[s - 1] if s else None)
  finally:
    run.progress.finish()  # a save in flight completes before anything else happens
    run.progress.restore_signal_handlers(previous)
  return run  # the caller clears run.progress once the run's summary is written


def _pretrain(config, workdir, pre, pre_data, programs, table_length):
  """Runs the quickstart's pre-training stage; returns the config that fine-tunes from it."""
  pre_dir = rundir.RunDir(workdir).file('pretrain')
  print(f'== pre-training {pre.model} on classes {list(pre.class_subset)} of {pre.dataset}',
        flush=True)
  if not check_workdir(pre, pre_dir):
    prepare_workdir(pre, pre_dir)
    pre_run = train_members(pre, pre_dir, pre_data, wd.MetricsLog(pre_dir), {}, programs,
                            table_length)
    wd.write_json(rundir.RunDir(pre_dir).file(rundir.SUMMARY), {'done': True})
    pre_run.progress.clear()
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.ckpt = rundir.RunDir(pre_dir).member(1, rundir.CHECKPOINT)
  return config


def run_experiment(config, workdir=None):
  """Trains every member of the experiment described by `config`; returns the summary dict."""
  config = config_check.resolve(config)
  config_check.validate(config)
  enable_compilation_cache(config.compilation_cache_dir)
  losses.rtd.set_workers(config.rtd_workers)
  workdir = workdir or wd.default_workdir(config)
  if check_workdir(config, workdir):
    print(f'{workdir} already holds a finished run (summary.json); pass --config.overwrite=True '
          'to train again')
    return rundir.RunDir(workdir).summary()
  data = datasets.load_dataset(config)  # errors here leave the work dir untouched
  table_length = total_steps(config, data)
  pre = pre_data = None
  if config.pretrain.enabled:
    pre = pretrain_config(config)
    pre_data = datasets.load_dataset(pre)
    table_length = max(table_length, total_steps(pre, pre_data))
  pretrained = {} if config.pretrain.enabled else starts_lib.load_checkpoints(config)
  with wd.WorkdirLock(workdir):  # one writing run per work dir
    if check_workdir(config, workdir):  # finished meanwhile by the run that held the lock
      return rundir.RunDir(workdir).summary()
    return _train(config, workdir, data, pretrained, table_length, pre, pre_data)


def _train(config, workdir, data, pretrained, table_length, pre, pre_data):
  """run_experiment once the inputs are read and the work dir is locked."""
  prepare_workdir(config, workdir)
  print(f'work dir: {workdir}', flush=True)
  out = rundir.RunDir(workdir)
  programs = {}
  if config.pretrain.enabled:
    config = _pretrain(config, workdir, pre, pre_data, programs, table_length)
    pretrained = starts_lib.load_checkpoints(config)

  wd.write_json(out.file(rundir.RUN_INFO), {
      'name': config.name, 'model': config.model, 'width': config.width,
      'num_classes': data.num_classes, 'metric': data.metric, 'dataset': config.dataset,
      'pretrained': list(config.ckpts) if config.ensemble == 'global_de' else config.ckpt})
  wd.save_npy(out.file(rundir.TEST_LABELS), data.test_labels.astype(np.int32))
  run_handle = wandb_log.start(config, workdir) if mesh.is_writer() else None
  log = wd.MetricsLog(workdir, run_handle)
  run = train_members(config, workdir, data, log, pretrained, programs, table_length)

  probs = [out.member_probs(i) for i in sorted(run.starts.finished)]
  summary = metrics.ensemble_summary(probs, data.test_labels, data.metric)
  summary['workdir'] = workdir
  summary['name'] = config.name
  # The last event, then summary.json (the mark of a finished run), then the progress save
  # goes: a run stopped in between resumes after its last stage and writes the same files.
  log.write('summary', mean_member_acc=summary['mean_member_acc'],
            ensemble_acc=summary['ensembles'][-1]['acc'], diversity=summary['diversity'])
  wd.write_json(out.file(rundir.SUMMARY), summary)
  run.progress.clear()
  if mesh.is_writer():
    print(metrics.format_summary(summary), flush=True)
  wandb_log.finish(run_handle, summary)
  return summary
