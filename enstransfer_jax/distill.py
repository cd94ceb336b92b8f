"""Distils a finished run's ensemble into one student network.

  python -m enstransfer_jax.distill WORKDIR [--epochs N] [--temperature T] [--alpha A]
                                    [--lr LR] [--init auto|pretrained|member1] [--out DIR]

The student has the members' architecture and starts from the pre-trained checkpoint the run
started from (run_info.json 'pretrained'; a new head where the class counts differ), or from
member 1 when the run had none (from scratch, Global DE) or with --init member1. It trains on
the run's training split with the run's augmentation, batch size, optimizer and schedule
(member 1's: `epochs` epochs at `lr`, the part of the schedule member 1 trains under) through the engine's own step and loop
(training/step.py, stage.py): the loss is losses/distill.py's

  alpha x T^2 x KL(mean_k softmax(z_k / T) || softmax(s / T)) + (1 - alpha) x CE(s, labels)

where z_k are the members' logits on the very images the student sees in that step (the same
random crop and flip), computed on the device in the same jitted step from the members held in
memory (aux['teacher'], copied to the devices once). They are held in memory, not cached per
epoch: the teacher is K networks of the student's size, evaluated in inference mode, and its
parameters are K times the student's; a cache of teacher probabilities could not follow the
per-step augmentation without storing every epoch's crops. training/stage.py's `teacher`
refuses, with one line, a teacher larger than half of an accelerator's memory.

Defaults: the run's member-1 epochs, T = 1 (the targets are the ensemble's own predictive
distribution) and alpha = 1 (the ensemble's predictions alone, no labels).

The student is a run of one member in DIR (default WORKDIR/distill): config.json (the run's,
with a `distill` section), run_info.json, metrics.jsonl, members/1/checkpoint and
test_probs.npy, summary.json, so `Ensemble.load(DIR)`, `predict DIR`, `analyze DIR` read it
like any run, and `analyze WORKDIR` puts it beside the ensemble and the soups. An interrupted
distillation resumes when the same command is run again, as a run does.
"""

import argparse
import os
import sys

import ml_collections

from enstransfer_jax import rundir
from enstransfer_jax.errors import UserError, user_errors
from enstransfer_jax.training import run_experiment

DEFAULT_DIR = 'distill'  # analysis/one_model.py reads WORKDIR/distill


def start_checkpoint(workdir, info, init='auto'):
  """(path, description) of the checkpoint the student starts from (module docstring)."""
  run = rundir.RunDir(workdir)
  member1 = run.member(1, rundir.CHECKPOINT)
  pre = info.get('pretrained') or ''
  pre = run.resolve(pre) if isinstance(pre, str) else pre
  if init == 'member1' or (init == 'auto' and not (isinstance(pre, str) and pre)):
    if not os.path.isdir(member1):
      raise UserError(f'{member1} is missing: the run has no member 1 to start the student from')
    return member1, 'member 1'
  if not isinstance(pre, str) or not pre:
    raise UserError(f'--init pretrained: {workdir} has no single pre-trained checkpoint '
                    f'(run_info.json pretrained={pre!r}); use --init member1')
  if not os.path.exists(pre):
    raise UserError(f'the run\'s pre-trained checkpoint {pre} is missing; restore it or use '
                    '--init member1')
  return os.path.abspath(pre), 'the pre-trained checkpoint'


def first_model_schedule(name):
  """The part of a run's schedule that member 1 trains under (schedules.py): the schedules
  with '+' switch to the ensemble cycles after it, and a run of one member has none."""
  if name == 'continious+cosine+sse':
    return 'continious+cosine'
  if '+' in name and not name.startswith('continious+'):
    return name.split('+')[0]
  return name


def student_config(workdir, epochs=None, temperature=1.0, alpha=1.0, lr=None, init='auto'):
  """The config of the student's run: the run's, one member from the start checkpoint."""
  workdir = os.path.abspath(workdir)
  run = rundir.RunDir(workdir)
  config, info = run.config(defaults=True), run.run_info()
  run.summary()  # a finished run
  ids = run.member_ids(required=True)
  if not temperature > 0:
    raise UserError(f'--temperature {temperature}: it must be > 0')
  if not 0.0 <= alpha <= 1.0:
    raise UserError(f'--alpha {alpha}: it must lie in [0, 1] (1 = the ensemble\'s '
                    'predictions alone, 0 = the labels alone)')
  if epochs is not None and epochs < 1:
    raise UserError(f'--epochs {epochs}: it must be at least 1')
  if lr is not None and not lr > 0:
    raise UserError(f'--lr {lr}: it must be > 0')
  ckpt, start = start_checkpoint(workdir, info, init)
  with config.unlocked():
    config.name = f"{info.get('name', config.get('name', 'run'))}_distilled"
    config.ensemble, config.num_fge, config.star_fge, config.ckpt = 'sse', 1, False, ckpt
    config.ckpts = ()
    config.epochs = int(epochs or config.epochs)
    config.lr = float(lr or config.lr)
    config.scheduler = first_model_schedule(config.scheduler)
    config.fmap_betas = (0.0,) * 5
    config.wo_beta, config.prev_ce_beta, config.freeze_layers = 0.0, 0.0, ()
    config.pretrain.enabled = False
    config.overwrite = False
    config.wandb_mode = 'disabled'
    config.distill = ml_collections.ConfigDict({
        'teacher': workdir, 'members': ids, 'temperature': float(temperature),
        'alpha': float(alpha), 'start': start})
  return config


def distill(workdir, out=None, **options):
  """Trains (or resumes, or reads back) the student of `workdir`; returns its summary."""
  rundir.RunDir(workdir).existing()
  config = student_config(workdir, **options)
  out = out or os.path.join(workdir, DEFAULT_DIR)
  d = config.distill
  print(f'== distilling {len(d.members)} members of {workdir} into one student from '
        f'{d.start}: {config.epochs} epochs, T={d.temperature:g}, alpha={d.alpha:g}; the '
        'teacher is held in device memory and evaluated in the same step', flush=True)
  return run_experiment(config, out)


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m enstransfer_jax.distill', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdir', metavar='WORKDIR', help='a finished run')
  p.add_argument('--epochs', type=int, default=None, help="default: the run's epochs")
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--alpha', type=float, default=1.0,
                 help='weight of the distillation term (1 - alpha: the labels\' CE)')
  p.add_argument('--lr', type=float, default=None, help="default: the run's lr")
  p.add_argument('--init', choices=('auto', 'pretrained', 'member1'), default='auto')
  p.add_argument('--out', default=None, help='default: WORKDIR/distill')
  return p.parse_args(argv)


def main(argv=None):
  args = vars(parse_args(sys.argv[1:] if argv is None else argv))
  with user_errors():
    distill(args.pop('workdir'), args.pop('out'), **args)


if __name__ == '__main__':
  main()
