"""run(config, workdir): check the config, prepare the work dir, train every member, write the
summary. The one entry point used by main.py, the tests and notebooks."""

import json
import os
import shutil

import numpy as np

from enstransfer_jax import metrics
from enstransfer_jax.data import datasets
from enstransfer_jax.training import config_check, loop, mesh, wandb_log
from enstransfer_jax.training import workdir as wd

# Fields that may differ when a run is continued in the same work dir.
_VOLATILE = ('overwrite', 'progress', 'wandb_mode', 'work_dir')


def _comparable(cfg_dict):
  return {k: v for k, v in cfg_dict.items() if k not in _VOLATILE}


def prepare_workdir(config, workdir):
  """Creates the work dir or checks that it belongs to this config. Returns True if finished."""
  cfg = json.loads(config.to_json_best_effort())
  cfg_path = os.path.join(workdir, 'config.json')
  if os.path.exists(cfg_path) and not config.overwrite:
    old = wd.read_json(cfg_path)
    if _comparable(old) != _comparable(cfg):
      diff = sorted(k for k in set(old) | set(cfg) if k not in _VOLATILE and old.get(k) != cfg.get(k))
      raise ValueError(f'work dir {workdir} holds a run with a different config ({diff[0]}: '
                       f'{old.get(diff[0])!r} there, {cfg.get(diff[0])!r} here); choose another '
                       '--workdir or pass --config.overwrite=True')
    if os.path.exists(os.path.join(workdir, 'summary.json')):
      return True
  if config.overwrite and os.path.isdir(workdir):
    for name in ('summary.json', 'metrics.jsonl', 'members', 'progress', 'pretrain', 'analysis'):
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  os.makedirs(workdir, exist_ok=True)
  wd.write_json(cfg_path, cfg)
  return False


def pretrain_config(config):
  """The quickstart's pre-training stage: a plain single model on pretrain.class_subset."""
  p = config.copy_and_resolve_references()
  with p.unlocked():
    p.class_subset = tuple(config.pretrain.class_subset)
    p.epochs, p.lr, p.scheduler = config.pretrain.epochs, config.pretrain.lr, 'cosine'
    p.ensemble, p.num_fge, p.ckpt, p.star_fge = 'sse', 1, '', False
    p.fmap_betas, p.wo_beta, p.prev_ce_beta, p.freeze_layers = (0.0,) * 5, 0.0, 0.0, ()
    p.pretrain.enabled = False
    p.wandb_mode = 'disabled'
    p.valid_freq = 0
  return p


def run(config, workdir=None):
  """Trains every member of the experiment described by `config`; returns the summary dict."""
  config_check.validate(config)
  workdir = workdir or wd.default_workdir(config)
  if prepare_workdir(config, workdir):
    print(f'{workdir} already holds a finished run (summary.json); pass --config.overwrite=True '
          'to train again')
    return wd.read_json(os.path.join(workdir, 'summary.json'))
  print(f'work dir: {workdir}', flush=True)

  if config.pretrain.enabled:
    pre = pretrain_config(config)
    pre_dir = os.path.join(workdir, 'pretrain')
    print(f'== pre-training {pre.model} on classes {list(pre.class_subset)} of {pre.dataset}',
          flush=True)
    if not prepare_workdir(pre, pre_dir):
      pre_data = datasets.load_dataset(pre)
      loop.train_members(pre, pre_dir, pre_data, wd.MetricsLog(pre_dir))
      wd.write_json(os.path.join(pre_dir, 'summary.json'), {'done': True})
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.ckpt = os.path.join(pre_dir, 'members', '1', 'checkpoint')

  data = datasets.load_dataset(config)
  wd.write_json(os.path.join(workdir, 'run_info.json'), {
      'name': config.name, 'model': config.model, 'width': config.width,
      'num_classes': data.num_classes, 'metric': data.metric, 'dataset': config.dataset,
      'pretrained': list(config.ckpts) if config.ensemble == 'global_de' else config.ckpt})
  wd.save_npy(os.path.join(workdir, 'test_labels.npy'), data.test_labels.astype(np.int32))
  run_handle = wandb_log.start(config, workdir)
  log = wd.MetricsLog(workdir, run_handle)
  exp = loop.train_members(config, workdir, data, log)

  probs = [wd.load_member_probs(workdir, i) for i in sorted(exp.finished)]
  summary = metrics.ensemble_summary(probs, data.test_labels, data.metric)
  summary['workdir'] = workdir
  summary['name'] = config.name
  wd.write_json(os.path.join(workdir, 'summary.json'), summary)
  log.write('summary', mean_member_acc=summary['mean_member_acc'],
            ensemble_acc=summary['ensembles'][-1]['acc'], diversity=summary['diversity'])
  if mesh.is_writer():
    print(metrics.format_summary(summary), flush=True)
  wandb_log.finish(run_handle, summary)
  return summary
