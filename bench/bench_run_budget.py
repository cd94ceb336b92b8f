"""Where the wall time of one whole `python main.py` run goes, CPU.

  python bench/bench_run_budget.py [--conv cpu|xla|im2col] [--cache DIR] [--sync]
      [--workdir DIR] -- [main.py flags, e.g. --config configs/quickstart.py --config.width=64]

Runs main.py in this process (its own flag parsing and code path) after wrapping a few of the
engine's functions with timers, and prints one breakdown of the wall time since the process
started:
  start-up      process start to the first line of this script, then the imports of JAX and
                the engine (what `python main.py` pays before it reads its config)
  data          datasets.load_dataset
  compilation   XLA compilations, counted and timed with a jax.monitoring listener on the
                events ending in 'backend_compile_duration' (a persistent-cache hit is counted
                too, with the time it took to read the program); tracing and lowering to StableHLO ('jaxpr_trace_duration',
                'jaxpr_to_mlir_module_duration') are listed beside it
  train steps   calls of the compiled train step; with --sync each call waits for its result
                (jax.block_until_ready), so the step's compute is counted here and not in
                whatever host call waits for it next (a diagnostic: the engine's loop does not
                wait); the first call (trace + compile) is listed apart
  start states  the stage's jitted start-state program (first call apart, as above)
  evaluation    Evaluator.member_probs (test-set probabilities at the end of training)
  saving        member checkpoints and probabilities (workdir.save_member), progress
                checkpoints (Progress.save / finish / clear)
  loop host     the rest of train_stage: gathering batches, copying them to the device,
                logging, NaN checks (and without --sync the steps' compute the host waits for)
  rest          everything else (config checks, work dir, summary, exit)

--conv sets ENSTRANSFER_CONV (the convolution lowering); --cache sets the run's persistent
compilation cache dir (--config.compilation_cache_dir; '' = off; a new empty dir = cold).
The load average is printed before and after.
"""

import argparse
import collections
import contextlib
import functools
import os
import runpy
import sys
import tempfile
import time

_T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _since_process_start():
  """Seconds from this process's start (kernel's start time) to now."""
  with open('/proc/self/stat') as f:
    start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
  with open('/proc/uptime') as f:
    uptime = float(f.read().split()[0])
  return uptime - start_ticks / os.sysconf('SC_CLK_TCK')


class Timers:
  """Named wall-time sums and call counts; nested timers of the same name count once."""

  def __init__(self):
    self.seconds = collections.Counter()
    self.calls = collections.Counter()
    self.events = collections.Counter()
    self.event_calls = collections.Counter()
    self._active = collections.Counter()
    self.compiles = []  # (function name, seconds), in order

  @contextlib.contextmanager
  def time(self, name):
    self._active[name] += 1
    start = time.perf_counter()
    try:
      yield
    finally:
      self._active[name] -= 1
      if not self._active[name]:
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1

  def wrap(self, owner, attr, name, sync=False, first_apart=False):
    """Replaces owner.attr with a timed wrapper."""
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def timed(*a, **kw):
      label = name
      if first_apart and not self.calls[name] and not self.calls[name + ' (first call)']:
        label = name + ' (first call)'
      with self.time(label):
        out = fn(*a, **kw)
        if sync:
          import jax  # pylint: disable=g-import-not-at-top
          jax.block_until_ready(out)
      return out
    setattr(owner, attr, timed)

  def listen(self, event, secs, **kw):
    name = event.rsplit('/', 1)[-1]
    self.events[name] += secs
    self.event_calls[name] += 1
    if name == 'backend_compile_duration':
      self.compiles.append((kw.get('fun_name', '?'), secs))

  def count(self, event, **_):
    self.event_calls[event.rsplit('/', 1)[-1]] += 1


def _wrap_step_factory(timers, module, factory, name, sync):
  """module.factory builds a jitted function: time each call of what it returns."""
  make = getattr(module, factory)

  @functools.wraps(make)
  def wrapped(*a, **kw):
    fn = make(*a, **kw)
    holder = type('Holder', (), {})()
    holder.fn = fn
    timers.wrap(holder, 'fn', name, sync=sync, first_apart=True)
    return holder.fn
  setattr(module, factory, wrapped)


def install(timers, sync):
  """The timers around the engine's functions (before main.py imports them)."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import resume, stage, step  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import workdir as wd  # pylint: disable=g-import-not-at-top
  try:
    from enstransfer_jax.evaluator import Evaluator  # pylint: disable=g-import-not-at-top
  except ImportError:
    from enstransfer_jax.analysis.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
  timers.wrap(datasets, 'load_dataset', 'data')
  timers.wrap(stage, 'train_stage', 'train_stage (all)')
  _wrap_step_factory(timers, step, 'make_train_step', 'train steps', sync)
  _wrap_step_factory(timers, step, 'make_init_state', 'start states', sync)
  timers.wrap(Evaluator, 'member_probs', 'evaluation')
  timers.wrap(wd, 'save_member', 'saving: members')
  for attr in ('save', 'finish', 'clear'):
    timers.wrap(resume.Progress, attr, 'saving: progress')


def report(timers, startup_s, imports_s, total_s):
  s = timers.seconds
  compile_s = timers.events['backend_compile_duration']
  inside_stage = ['train steps', 'train steps (first call)', 'start states',
                  'start states (first call)', 'evaluation', 'saving: members',
                  'saving: progress']
  loop_host = s['train_stage (all)'] - sum(s[k] for k in inside_stage)
  named = ['data'] + inside_stage
  rest = total_s - startup_s - imports_s - sum(s[k] for k in named) - loop_host
  rows = [('start-up (interpreter, before this script)', startup_s, ''),
          ('imports (jax, the engine)', imports_s, '')]
  rows += [(k, s[k], f'{timers.calls[k]} calls') for k in named]
  rows += [('loop host (train_stage minus the above)', loop_host, ''),
           ('rest (config, work dir, summary, exit)', rest, ''),
           ('total wall', total_s, '')]
  print(f'{"part":<46}{"s":>8}')
  for name, secs, note in rows:
    print(f'{name:<46}{secs:8.2f}  {note}')
  print(f'compilations: {timers.event_calls["backend_compile_duration"]} programs, '
        f'{compile_s:.2f} s compiling (inside the parts above); tracing '
        f'{timers.events["jaxpr_trace_duration"]:.2f} s, lowering '
        f'{timers.events["jaxpr_to_mlir_module_duration"]:.2f} s')
  print('  ' + ', '.join(f'{name} {secs:.2f}' for name, secs in timers.compiles))
  cache = {k: v for k, v in timers.event_calls.items() if 'cache' in k}
  if cache:
    print('cache events: ' + ', '.join(f'{k} {v}' for k, v in sorted(cache.items())))


def main():
  argv = sys.argv[1:]
  ours, main_args = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv \
      else (argv, [])
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--conv', choices=('cpu', 'xla', 'im2col'), help='ENSTRANSFER_CONV')
  p.add_argument('--cache', help="compilation cache dir ('' = off; default: a new empty dir)")
  p.add_argument('--sync', action='store_true', help='wait for each step (see above)')
  p.add_argument('--workdir', help='work dir (default: a new temporary dir)')
  args = p.parse_args(ours)
  startup_s = _since_process_start() - (time.perf_counter() - _T0)
  if args.conv:
    os.environ['ENSTRANSFER_CONV'] = args.conv
  cache = tempfile.mkdtemp(prefix='xla_cache_') if args.cache is None else args.cache
  workdir = args.workdir or tempfile.mkdtemp(prefix='budget_run_')
  print(f'python bench/bench_run_budget.py {" ".join(argv)}', flush=True)
  print(f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, {os.cpu_count()} CPUs, '
        f'conv {os.environ.get("ENSTRANSFER_CONV", "auto")}, cache {cache or "off"}, '
        f'load {os.getloadavg()[0]:.2f}', flush=True)
  sys.path.insert(0, ROOT)
  t = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  timers = Timers()
  jax.monitoring.register_event_duration_secs_listener(timers.listen)
  jax.monitoring.register_event_listener(timers.count)
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top,unused-import
  imports_s = time.perf_counter() - t
  install(timers, args.sync)
  sys.argv = [os.path.join(ROOT, 'main.py')] + main_args + [
      f'--config.compilation_cache_dir={cache}', '--config.overwrite=True',
      f'--workdir={workdir}']
  code = 0
  try:
    runpy.run_path(sys.argv[0], run_name='__main__')
  except SystemExit as e:
    code = e.code or 0
  total_s = _since_process_start()
  print(f'load {os.getloadavg()[0]:.2f} at the end; exit {code}', flush=True)
  report(timers, startup_s, imports_s, total_s)
  sys.exit(code)


if __name__ == '__main__':
  main()
