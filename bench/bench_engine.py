"""Quickstart wall time and XLA compilations, side by side for one or more checkouts.

  python bench/bench_engine.py [--repo DIR ...] [--runs 2] [--seeds 0,1]

For each checkout (default: this one) runs `configs/quickstart.py` in a fresh process and a
fresh work dir (with the seeds of `--seeds` in turn), `--runs` times in a row with one
persistent compilation cache per checkout (empty before the first run), and prints the number
of XLA compilations, the seconds spent compiling (a jax.monitoring listener on backend compile
events) and the wall time. Runs of different checkouts alternate, so machine noise hits them
alike.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r'''
import json, os, sys, time
repo, workdir, cache, seed = sys.argv[1:5]
sys.path.insert(0, repo)
os.chdir(repo)
import jax
from jax import monitoring
events = []
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: events.append(secs) if name.endswith('backend_compile_duration')
    else None)
jax.config.update('jax_compilation_cache_dir', cache)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
from configs import quickstart
config = quickstart.get_config()
config.progress = False
config.seed = int(seed)
if 'compilation_cache_dir' in config:
  config.compilation_cache_dir = cache
start = time.time()
try:
  from enstransfer_jax.training import run_experiment
except ImportError:  # checkouts before run_experiment
  from enstransfer_jax.train import run as run_experiment
summary = run_experiment(config, workdir)
print('BENCH ' + json.dumps({'compilations': len(events), 'compile_s': sum(events),
                             'wall_s': time.time() - start,
                             'ensemble_acc': summary['ensembles'][-1]['acc']}))
'''


def run_once(repo, workdir, cache, seed=0):
  out = subprocess.run([sys.executable, '-c', _CHILD, repo, workdir, cache, str(seed)],
                       capture_output=True, text=True, check=False,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', WANDB_MODE='disabled'))
  lines = [l for l in out.stdout.splitlines() if l.startswith('BENCH ')]
  if out.returncode or not lines:
    raise SystemExit(f'{repo}: the quickstart failed:\n{out.stderr[-3000:]}')
  return json.loads(lines[-1][len('BENCH '):])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repo', action='append', default=None,
                 help='checkout to measure (repeat for several); default: this one')
  p.add_argument('--runs', type=int, default=2, help='runs per checkout (same cache)')
  p.add_argument('--seeds', default='0',
                 help='comma-separated seeds, run i uses the i-th (cycling); e.g. 0,1 shows '
                      'whether a run with another seed finds its programs in the cache')
  args = p.parse_args()
  repos = [os.path.abspath(r) for r in (args.repo or
                                         [os.path.dirname(os.path.dirname(__file__))])]
  tmp = tempfile.mkdtemp(prefix='bench_engine_')
  rows = []
  seeds = [int(x) for x in args.seeds.split(',')]
  for run in range(args.runs):
    for i, repo in enumerate(repos):
      res = run_once(repo, os.path.join(tmp, f'{i}_{run}'), os.path.join(tmp, f'cache_{i}'),
                     seeds[run % len(seeds)])
      rows.append(dict(repo=repo, run=run + 1, seed=seeds[run % len(seeds)], **res))
      print(f"{repo} run {run + 1} (seed {rows[-1]['seed']}): "
            f"{res['compilations']} compilations, "
            f"{res['compile_s']:.1f} s compiling, {res['wall_s']:.1f} s wall, "
            f"ensemble acc {100 * res['ensemble_acc']:.2f}%", flush=True)
  print('\n| checkout | run | seed | compilations | compile s | wall s |\n'
        '|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['repo']} | {r['run']} | {r['seed']} | {r['compilations']} | "
          f"{r['compile_s']:.1f} | "
          f"{r['wall_s']:.1f} |")


if __name__ == '__main__':
  main()
