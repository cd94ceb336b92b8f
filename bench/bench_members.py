"""CPU benchmark: K ensemble members trained at once (one vmapped step) vs one after another.

  python bench/bench_members.py [--members 4] [--batch 64] [--width 16] [--warmup 2] [--steps 5]

Both modes run the engine's own step (enstransfer_jax/training/step.py, built as training/stage.py
builds a stage, through bench/gpu_bench.py's build_engine) on ResNet18 width 16, uint8 32x32 images,
the 'cifar' transform (pad 4, crop 32, flip) inside the step, float32, batch 64 per member,
configs/starsse.py otherwise:
  parallel    one jitted K-member step per round (jax.vmap over the member axis, as
              config.parallel_members=True trains StarSSE members 2..K+1 together)
  sequential  K calls of the jitted K=1 step per round, each on its own member state (the
              per-step cost of training the members one after another)
member-images/s = K * batch / median round time over the timed rounds (after warm-up rounds,
each call block_until_ready). Each mode runs in its own subprocess, so resource.getrusage's
ru_maxrss is that mode's own peak resident memory: 'base' after imports and state set-up,
'compiled' after XLA's compile, 'peak' at the end (all include the Python + JAX baseline).
--repeat N runs each mode N times, alternating, and keeps the fastest run of each (loaded machines).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

_MARK = '@@ '
MODES = ('parallel', 'sequential')


def _rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_mode(args):
  """One mode in this process; prints its result as one marked JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  k = args.members
  config = gpu_bench.engine_config('ResNet18', args.width, 32, args.batch, transform='cifar')
  lowered, state, run = gpu_bench.build_engine(config, k if args.mode == 'parallel' else 1)
  if args.mode == 'sequential':  # K member states; each is donated on its own
    state = [state] + [jax.tree.map(jnp.copy, state) for _ in range(k - 1)]
  jax.block_until_ready(state)
  base = _rss_mib()
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  after_compile = _rss_mib()

  def round_(st, i):
    if args.mode == 'parallel':
      return run(compiled, st, i)
    out, metrics = [], []
    for member in st:
      member, m = run(compiled, member, i)
      jax.block_until_ready(member)
      out.append(member)
      metrics.append(m)
    return out, metrics

  _, times, _ = gpu_bench.time_calls(round_, state, args.warmup, args.steps)
  med = statistics.median(times)
  print(_MARK + json.dumps({
      'mode': args.mode, 'member_images_per_s': k * args.batch / med, 'round_ms': 1e3 * med,
      'compile_s': compile_s, 'base_mib': base, 'compiled_mib': after_compile,
      'peak_mib': _rss_mib(), 'times_ms': [round(1e3 * t, 1) for t in times]}), flush=True)


def _child(mode, args):
  cmd = [sys.executable, os.path.abspath(__file__), '--mode', mode, '--members',
         str(args.members), '--batch', str(args.batch), '--width', str(args.width),
         '--warmup', str(args.warmup), '--steps', str(args.steps)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  marked = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not marked:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    raise RuntimeError(f'the {mode} run failed (exit {proc.returncode}): {tail[0]}')
  return json.loads(marked[-1][len(_MARK):])


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--members', type=int, default=4)
  p.add_argument('--batch', type=int, default=64, help='batch per member')
  p.add_argument('--width', type=int, default=16, help='ResNet18 base width')
  p.add_argument('--warmup', type=int, default=2, help='warm-up rounds')
  p.add_argument('--steps', type=int, default=5, help='timed rounds')
  p.add_argument('--repeat', type=int, default=1, help='runs of each mode, alternating')
  p.add_argument('--mode', choices=MODES, help=argparse.SUPPRESS)  # internal: the child
  args = p.parse_args(argv)
  for name in ('members', 'batch', 'width', 'steps', 'repeat'):
    if getattr(args, name) < 1:
      p.error(f'--{name} must be >= 1')
  if args.warmup < 0:
    p.error('--warmup must be >= 0')
  return args


def main(argv=None):
  args = _parse(argv)
  if args.mode:
    run_mode(args)
    return
  command = (f'python bench/bench_members.py --members {args.members} --batch {args.batch} '
             f'--width {args.width} --warmup {args.warmup} --steps {args.steps} '
             f'--repeat {args.repeat}')
  print(command, flush=True)
  results = {mode: [] for mode in MODES}
  for _ in range(args.repeat):
    for mode in MODES:
      results[mode].append(_child(mode, args))
      r = results[mode][-1]
      print(f'  {mode}: {r["member_images_per_s"]:.1f} member-img/s, rounds {r["times_ms"]} ms',
            flush=True)
  print(f'ResNet18 width {args.width}, 32 px, cifar transform, float32, batch {args.batch} per '
        f'member, K={args.members}, {os.cpu_count()} CPUs, median of {args.steps} rounds after '
        f'{args.warmup} warm-up')
  print(f'{"mode":<12}{"member-img/s":>14}{"ms/round":>10}{"compile s":>11}{"base MiB":>10}'
        f'{"compiled MiB":>14}{"peak MiB":>10}')
  best = {}
  for mode in MODES:
    r = max(results[mode], key=lambda x: x['member_images_per_s'])
    best[mode] = r['member_images_per_s']
    print(f'{mode:<12}{r["member_images_per_s"]:>14.1f}{r["round_ms"]:>10.1f}'
          f'{r["compile_s"]:>11.1f}{r["base_mib"]:>10.0f}{r["compiled_mib"]:>14.0f}'
          f'{r["peak_mib"]:>10.0f}')
  print(f'parallel / sequential throughput: {best["parallel"] / best["sequential"]:.2f}')


if __name__ == '__main__':
  main()
