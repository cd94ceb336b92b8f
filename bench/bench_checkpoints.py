"""Time the training loop spends saving progress checkpoints: synchronous saves at every
epoch's end (the engine before asynchronous saves) against the default (asynchronous, every
`checkpoint_every_minutes`), side by side on the same run.

  python bench/bench_checkpoints.py [--width 64] [--epochs 2] [--every-steps 0]

Each mode trains configs/quickstart.py's fine-tuning shape (ResNet-18 of --width at 32 px on
digits 5-9, from scratch, StarSSE with 2 members) in a fresh work dir; the modes alternate
over --repeats, and the table gives the seconds the loop was blocked in `Progress.save`, the
number of saves and the run's wall time.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import quickstart  # pylint: disable=wrong-import-position
from enstransfer_jax.training import resume  # pylint: disable=wrong-import-position
from enstransfer_jax.training import run_experiment  # pylint: disable=wrong-import-position

MODES = {'synchronous, every epoch': dict(asynchronous=False, every_minutes=0.0),
         'asynchronous, every 5 minutes': dict(asynchronous=True, every_minutes=5.0),
         'asynchronous, every epoch': dict(asynchronous=True, every_minutes=0.0)}


def run_once(args, mode):
  stats = {'seconds': 0.0, 'saves': 0}
  real_init, real_save = resume.Progress.__init__, resume.Progress.save

  def init(self, workdir, every_minutes=0.0, asynchronous=True):
    del every_minutes, asynchronous
    real_init(self, workdir, MODES[mode]['every_minutes'], MODES[mode]['asynchronous'])

  def save(self, *a, **k):
    start = time.monotonic()
    real_save(self, *a, **k)
    stats['seconds'] += time.monotonic() - start
    stats['saves'] += 1

  c = quickstart.get_config()
  c.pretrain.enabled = False
  c.ckpt, c.width, c.epochs, c.num_fge, c.fge_epochs = '', args.width, args.epochs, 2, args.epochs
  c.progress, c.compilation_cache_dir = False, args.cache
  c.checkpoint_every_steps = args.every_steps
  resume.Progress.__init__, resume.Progress.save = init, save
  start = time.monotonic()
  try:
    run_experiment(c, tempfile.mkdtemp(prefix='bench_ckpt_'))
  finally:
    resume.Progress.__init__, resume.Progress.save = real_init, real_save
  return stats['seconds'], stats['saves'], time.monotonic() - start


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--epochs', type=int, default=2)
  p.add_argument('--every-steps', type=int, default=0)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--cache', default=os.path.join(tempfile.gettempdir(), 'bench_ckpt_cache'))
  args = p.parse_args()
  rows = {m: [] for m in MODES}
  run_once(args, next(iter(MODES)))  # compile once (shared cache), not timed
  for _ in range(args.repeats):
    for mode in MODES:
      rows[mode].append(run_once(args, mode))
  print(f'\nResNet-18 width {args.width}, 32 px, {args.epochs} + {args.epochs} epochs, '
        f'every_steps {args.every_steps}')
  print('| saving | blocked in save s | saves | wall s |\n|---|---|---|---|')
  for mode, runs in rows.items():
    sec, saves, wall = (sum(r[i] for r in runs) / len(runs) for i in range(3))
    print(f'| {mode} | {sec:.2f} | {saves:.0f} | {wall:.1f} |')


if __name__ == '__main__':
  main()
