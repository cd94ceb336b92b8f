"""GPU benchmark of the JAX training engine against the PyTorch reference, in one short run.

  bash bench/gpu.sh --out DIR         # on a GPU machine: prints versions, runs this, writes DIR
  python bench/gpu_bench.py --smoke   # (or --tiny) CPU smoke run: ResNet18 width 8, 32 px, batch 8
                                      # (torch on a CPU runs single-threaded)

Rows; images/s is the median over the timed steps (after warm-up, each step block_until_ready):
  a       JAX ResNet-50 train step (enstransfer_jax/training/step.py, configs/starsse.py), float32,
          K=1, batch 256: uint8 32x32 CIFAR-like images augmented to 224 px inside the step with
          the 'imagenet' transform, as a CIFAR-100 run does (images already on the device)
  b       the same in bfloat16 (config.dtype='bfloat16')
  c       the 'imagenet' train augmentation alone (jitted train_transform 32 -> 224, batch 256)
  d       K=4 members in one vmapped bf16 step, member-images/s (4 sequential K=1 steps = row b)
  e       row b plus the RTD loss of configs/sse_rtd.py (fmap_betas=(0,0,0,0,0.0316), pooled map)
          against the members' start variables (aux={'reg': ...}, as in an SSE/StarSSE cycle);
          the added ms/step over row b is a ratio below (giotto-ph runs on the host, 1 thread)
  g       row b plus the RTD-Lite loss of configs/sse_rtd_lite.py (its fmap_betas, pooled map),
          computed on the device; the added ms/step over row b is a ratio below
  r       row a with config.remat=True (each residual block rematerialised): its 'xla' and 'peak'
          memory against row a's is what remat saves on this GPU (bench/bench_memory.py has the
          CPU-compiled figures, where XLA's CPU compiler undoes the recomputation)
  s       the Swin-Tiny step of configs/swin_starsse.py (AdamW groups, clip_grad 5, label
          smoothing, Mixup / CutMix, RandAugment + random erasing on the device), bf16, K=1,
          32 -> 224 px (--tiny: SwinNano at 32 px)
  f       the PyTorch reference step: torchvision resnet50(num_classes=100), fp32, SGD(lr 0.05,
          momentum 0.9, wd 1e-4), CrossEntropyLoss, model.train(), the grad norm its NoOpScaler
          takes, batch 256 at 224 px already on the device: the reference's data loading and
          CPU augmentation are NOT counted; cudnn deterministic=True, benchmark=False as the
          reference's set_random_seed (--torch-cudnn benchmark for cudnn.benchmark=True)
  f-bf16  row f with forward and loss under torch.autocast(bfloat16)

Timing plan: each framework runs in a child process, torch first, then JAX (with
XLA_PYTHON_CLIENT_PREALLOCATE=false). The JAX child lowers every row, then compiles and times the
rows one at a time (--compile parallel: all compiles at once in threads first) in the order c, b, a, d,
e, nothing else running. The parent stops a child at the --budget-s time limit (seconds since
start) and still prints what finished.
No XLA flags are set on the GPU (--tiny lowers XLA's CPU optimisation level: compile time only).
Progress lines carry timestamps; the table goes to DIR/gpu_bench.json (--out DIR, default
bench/out) after every row.

Memory: torch rows report torch.cuda.max_memory_allocated, reset per row. JAX cannot reset its
counter: 'peak' is device.memory_stats()['peak_bytes_in_use'] of the JAX process after the row,
shown as '<=' when the row did not raise it (an earlier row or the compile phase's autotuning
peaked higher); 'xla' is the compiled step's own footprint (arguments + outputs + temporaries -
donated), exact per row.

Precision: JAX and torch both run fp32 convolutions in TF32 on Ampere+ by default (JAX default
precision; torch cudnn.allow_tf32=True); neither is changed here.
"""

import argparse
import concurrent.futures
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_T0 = float(os.environ.get('GPU_BENCH_T0', time.time()))  # the parent's start
_MARK = '@@ '
JAX_ROWS = ('c', 'b', 'a', 'r', 'd', 'e', 'g', 's')  # run order: cheap first, memory mostly increasing
TORCH_ROWS = ('f', 'f-bf16')
ALL_ROWS = ('a', 'b', 'c', 'd', 'e', 'g', 'r', 's', 'f', 'f-bf16')
RTD_BETAS = (0.0, 0.0, 0.0, 0.0, 0.0316)  # configs/sse_rtd.py
CIFAR_PX = 32
NUM_CLASSES = 100


def log(msg):
  print(f'[{time.strftime("%H:%M:%S")} +{time.time() - _T0:6.1f}s] {msg}', flush=True)


def _emit(record):
  print(_MARK + json.dumps(record), flush=True)


def sizes(args):
  if args.tiny:
    return dict(arch='ResNet18', width=8, image_size=32, batch=args.batch or 8)
  return dict(arch='ResNet50', width=64, image_size=224, batch=args.batch or 256)


# ----- the JAX engine, as training/stage.py builds a stage (shared with bench_members.py) -----

def engine_config(arch, width, image_size, batch, transform='imagenet', dtype='float32'):
  """configs/starsse.py with the model and input sizes of the benchmark."""
  sys.path.insert(0, ROOT)
  from configs import starsse  # pylint: disable=g-import-not-at-top
  c = starsse.get_config()
  c.model, c.width, c.image_size, c.batch_size = arch, width, image_size, batch
  c.transform_name, c.dtype = transform, dtype
  return c


def swin_engine_config(s, dtype):
  """configs/swin_starsse.py at the benchmark's batch (SwinNano at 32 px for --tiny)."""
  sys.path.insert(0, ROOT)
  from configs import swin_starsse  # pylint: disable=g-import-not-at-top
  c = swin_starsse.get_config()
  if s['image_size'] < 224:
    c.model, c.width, c.image_size = 'SwinNano', 16, 32
  c.batch_size, c.dtype = s['batch'], dtype
  return c


_START = {}  # (arch, width, seed) -> start variables, shared by the rows (params are float32)


def build_engine(config, k, terms=None, seed=0):
  """(lowered step, state, run) for k members started from one random init.

  run(fn, state, i) -> (state, metrics) calls fn (the compiled step) on fixed uint8 CIFAR-like
  images (the state's step counter gives each step its own augmentation); the regulariser
  variables (RTD) are the members' start variables. Constant lr and momentum.
  """
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import models, optim  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  terms = terms or step_lib.Terms()
  dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
  model = models.create_model(config.model, NUM_CLASSES, width=config.width, dtype=dtype,
                              image_size=config.image_size, remat=config.get('remat', False))
  key = (config.model, config.width, seed)
  if key not in _START:
    _START[key] = models.init_variables(
        models.create_model(config.model, NUM_CLASSES, width=config.width,
                            image_size=config.image_size),
        jax.random.PRNGKey(seed))
  variables = _START[key]
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * k), tree)
  tx = optim.create_optimizer(config)
  steps = 1 << 16  # constant schedules, long enough for any row
  schedule = {'lr': np.full(steps, config.lr, np.float32),
              'momentum': np.full(steps, config.momentum, np.float32)}
  state = step_lib.make_init_state(tx, terms)(
      stack(variables), np.zeros(k, np.int32), np.arange(1, k + 1, dtype=np.int32), schedule,
      seed)
  rng = np.random.default_rng(seed)
  shape = (k, config.batch_size, CIFAR_PX, CIFAR_PX, 3)
  batch = {'images': jax.device_put(rng.integers(0, 256, shape, dtype=np.uint8)),
           'labels': jax.device_put(rng.integers(0, NUM_CLASSES, shape[:2]).astype(np.int32)),
           'mask': jnp.ones(shape[:2], jnp.float32), 'new_epoch': jnp.zeros((k,), bool)}
  aux = {'reg': variables} if terms.fmap_betas else {}
  train_step = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
  lowered = train_step.lower(state, batch, aux)

  def run(fn, state, i):
    del i  # the state's own step counter moves on
    return fn(state, batch, aux)
  return lowered, state, run


def time_calls(call, state, warmup, timed):
  """Runs warmup + timed steps, blocking after each; returns (state, timed seconds, metrics)."""
  import jax  # pylint: disable=g-import-not-at-top
  times, metrics = [], []
  for i in range(warmup + timed):
    start = time.perf_counter()
    state, m = call(state, i)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - start)
    metrics.append(m)
  return state, times[warmup:], jax.device_get(metrics[warmup:])


def xla_bytes(compiled):
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None


def peak_bytes():
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


# ----- child processes -----

def _prepare_train(row, s, dtype, k, terms, warmup, timed, swin=False, remat=False):
  """Lowers a train-step row; returns (lowered, finish(compiled) -> result)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  config = (swin_engine_config(s, dtype) if swin else
            engine_config(s['arch'], s['width'], s['image_size'], s['batch'], dtype=dtype))
  config.remat = remat
  lowered, state, run = build_engine(config, k, terms)

  def finish(compiled):
    log(f'row {row}: {warmup} warm-up + {timed} timed steps')
    before = peak_bytes()
    _, times, metrics = time_calls(lambda st, i: run(compiled, st, i), state, warmup, timed)
    med = statistics.median(times)
    out = dict(images_per_s=k * s['batch'] / med, ms_per_step=1e3 * med,
               xla_bytes=xla_bytes(compiled), **_peak(before),
               times_ms=[round(1e3 * t, 2) for t in times],
               loss=[float(np.mean(m['loss'])) for m in metrics])
    if 'rtd_host_seconds' in metrics[0]:
      out['rtd_host_ms'] = 1e3 * statistics.median(float(np.mean(m['rtd_host_seconds']))
                                                    for m in metrics)
    return out
  return lowered, finish


def _prepare_augment(s, warmup, timed):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
  fn = jax.jit(lambda key, x: augment.train_transform(
      key, x, transform='imagenet', image_size=s['image_size'], interpolation='bilinear'))
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (s['batch'], CIFAR_PX, CIFAR_PX, 3), dtype=np.uint8))
  key = jax.random.PRNGKey(0)

  def finish(compiled):
    call = lambda st, i: (st, compiled(jax.random.fold_in(key, i), images))
    before = peak_bytes()
    _, times, _ = time_calls(call, None, warmup, timed)
    med = statistics.median(times)
    return dict(images_per_s=s['batch'] / med, ms_per_step=1e3 * med,
                xla_bytes=xla_bytes(compiled), **_peak(before),
                times_ms=[round(1e3 * t, 2) for t in times])
  return fn.lower(key, images), finish


def _peak(before):
  """The process peak after a row; 'peak_is_row' False: the row stayed under an earlier peak."""
  after = peak_bytes()
  return {'peak_bytes': after, 'peak_is_row': None if after is None else after > (before or 0)}


def _error(err):
  """One line: the message's first line, or its last where the first opens a traceback."""
  lines = [l for l in str(err).splitlines() if l.strip()] or ['']
  line = lines[-1] if 'Traceback' in lines[0] else lines[0]
  return f'{type(err).__name__}: {line.strip()[:300]}'


def _compile_all(lowered, parallel):
  """{row: (compiled or exception, seconds)}; concurrently in threads when parallel."""
  def one(row):
    start = time.perf_counter()
    try:
      out = lowered[row].compile()
    except Exception as err:  # pylint: disable=broad-except  # reported in the row
      out = err
    log(f'row {row}: compiled in {time.perf_counter() - start:.1f} s'
        + (f' ({_error(out)})' if isinstance(out, Exception) else ''))
    return out, time.perf_counter() - start
  if not parallel:
    return {row: one(row) for row in lowered}
  with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
    futures = {row: pool.submit(one, row) for row in lowered}
    done = {row: f.result() for row, f in futures.items()}
  for row, (out, _) in done.items():  # a concurrent compile that failed gets a serial retry
    if isinstance(out, Exception) and 'RESOURCE_EXHAUSTED' not in str(out):
      log(f'row {row}: compiling again, alone')
      done[row] = one(row)
  return done


def run_jax(args, rows):
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  if args.cache_dir:
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  _emit({'kind': 'meta', 'part': 'jax', 'jax': jax.__version__, 'flax': flax.__version__,
         'device': str(dev), 'device_kind': dev.device_kind, 'platform': dev.platform,
         'compile': args.compile, 'xla_flags': os.environ.get('XLA_FLAGS', '')})
  log(f'jax {jax.__version__} on {dev.platform}: {jax.devices()}')
  s, k = sizes(args), args.members
  px = f'{s["arch"]} batch {s["batch"]}, aug {CIFAR_PX}->{s["image_size"]} px in the step'
  rtd = step_lib.Terms(fmap_betas=RTD_BETAS, fmap_loss_type='RTDLoss', rtd_dim=1, rtd_card=50)
  from configs import sse_rtd_lite  # pylint: disable=g-import-not-at-top
  lite_betas = tuple(sse_rtd_lite.get_config().fmap_betas)
  lite = step_lib.Terms(fmap_betas=lite_betas, fmap_loss_type='RTDLiteLoss')
  steps = (args.warmup, args.steps)
  plan = {
      'a': (f'JAX {px}, fp32, K=1', lambda: _prepare_train('a', s, 'float32', 1, None, *steps)),
      'b': (f'JAX {px}, bf16, K=1', lambda: _prepare_train('b', s, 'bfloat16', 1, None, *steps)),
      'c': (f'JAX imagenet augmentation alone, {CIFAR_PX}->{s["image_size"]} px, '
            f'batch {s["batch"]}', lambda: _prepare_augment(s, *steps)),
      'd': (f'JAX {px}, bf16, K={k} vmapped (member-img/s)',
            lambda: _prepare_train('d', s, 'bfloat16', k, None, *steps)),
      'e': ('JAX row b + RTD beta 0.0316 on the pooled map',
            lambda: _prepare_train('e', s, 'bfloat16', 1, rtd, args.rtd_warmup, args.rtd_steps)),
      'g': (f'JAX row b + RTD-Lite beta {lite_betas[-1]:g} on the pooled map',
            lambda: _prepare_train('g', s, 'bfloat16', 1, lite, *steps)),
      'r': (f'JAX {px}, fp32, K=1, remat', lambda: _prepare_train('r', s, 'float32', 1, None,
                                                                   *steps, remat=True)),
      's': ('JAX Swin-Tiny step of configs/swin_starsse.py (full recipe), bf16, K=1',
            lambda: _prepare_train('s', s, 'bfloat16', 1, None, *steps, swin=True)),
  }
  order = [r for r in JAX_ROWS if r in rows]
  lowered, finish, failed = {}, {}, {}
  for row in order:
    try:
      lowered[row], finish[row] = plan[row][1]()
    except Exception as err:  # pylint: disable=broad-except  # one failed row must not end the run
      failed[row] = _error(err)
  log(f'lowered rows {",".join(lowered)}; compiling '
      f'{"concurrently" if args.compile == "parallel" else "one by one, each timed at once"}')
  # serial: compile a row, time it, then the next, so a slow compile (K members) cannot keep
  # the rows before it from being recorded; parallel: all compiles first, then the timings.
  compiled = _compile_all(lowered, True) if args.compile == 'parallel' else {}
  if compiled:
    _emit({'kind': 'meta', 'part': 'jax_compiled', 'peak_bytes': peak_bytes()})
  for row in order:
    result = {'error': failed[row]} if row in failed else {}
    if row in lowered and row not in compiled:
      compiled.update(_compile_all({row: lowered[row]}, False))
    if row in compiled:
      fn, seconds = compiled.pop(row)
      result = {'error': _error(fn)} if isinstance(fn, Exception) else {'compile_s': seconds}
      if not isinstance(fn, Exception):
        try:
          result.update(finish.pop(row)(fn))
        except Exception as err:  # pylint: disable=broad-except
          result = {'error': _error(err)}
      del fn
    if 'error' in result:
      log(f'row {row} failed: {result["error"]}')
    _emit({'kind': 'row', 'id': row, 'title': plan[row][0], **result})


def _torch_model(s):
  """torchvision's resnet50 where installed (and not --tiny), else the twin in tests/."""
  if s['arch'] == 'ResNet50' and s['width'] == 64:
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
      model = torchvision.models.resnet50(num_classes=NUM_CLASSES)
      return model, f'torchvision {torchvision.__version__}'
    except ImportError:
      pass
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  import torch  # pylint: disable=g-import-not-at-top
  from torch_resnet import TorchResNet  # pylint: disable=g-import-not-at-top

  class LogitsOnly(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.net = TorchResNet(s['arch'], NUM_CLASSES, s['width'])

    def forward(self, x):
      return self.net(x)[0]
  return LogitsOnly(), 'tests/torch_resnet.py (torchvision layout)'


def run_torch(args, rows):
  import torch  # pylint: disable=g-import-not-at-top
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  if dev == 'cpu':  # smoke runs: OpenMP threads spin for seconds on a shared, loaded CPU
    torch.set_num_threads(1)
  torch.backends.cudnn.deterministic = args.torch_cudnn == 'reference'
  torch.backends.cudnn.benchmark = args.torch_cudnn == 'benchmark'
  s = sizes(args)
  name = torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'
  _emit({'kind': 'meta', 'part': 'torch', 'torch': torch.__version__, 'device': name,
         'cudnn_tf32': torch.backends.cudnn.allow_tf32,
         'matmul_tf32': torch.backends.cuda.matmul.allow_tf32, 'cudnn': args.torch_cudnn,
         'threads': torch.get_num_threads()})
  log(f'torch {torch.__version__} on {name}')
  for row in [r for r in TORCH_ROWS if r in rows]:
    bf16 = row == 'f-bf16'
    torch.manual_seed(0)
    model, source = _torch_model(s)
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(s['batch'], 3, s['image_size'], s['image_size'], device=dev)
    y = torch.randint(0, NUM_CLASSES, (s['batch'],), device=dev)
    params = [p for p in model.parameters()]
    if dev == 'cuda':
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()

    def step():
      opt.zero_grad()
      with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=bf16):
        loss = criterion(model(x), y)
      loss.backward()
      opt.step()
      torch.norm(torch.stack([torch.norm(p.grad.detach(), 2) for p in params]), 2)
      if dev == 'cuda':
        torch.cuda.synchronize()
      return loss

    log(f'row {row}: {s["arch"]} ({source}), {"bf16 autocast" if bf16 else "fp32"}')
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
      start = time.perf_counter()
      loss = step()
      times.append(time.perf_counter() - start)
      losses.append(loss.item())
    med = statistics.median(times[args.warmup:])
    title = (f'torch {s["arch"]} {"bf16 autocast" if bf16 else "fp32"}, batch {s["batch"]} at '
             f'{s["image_size"]} px on the device ({source.split()[0]})')
    _emit({'kind': 'row', 'id': row, 'title': title,
           'images_per_s': s['batch'] / med, 'ms_per_step': 1e3 * med, 'compile_s': times[0],
           'peak_bytes': torch.cuda.max_memory_allocated() if dev == 'cuda' else None,
           'times_ms': [round(1e3 * t, 2) for t in times[args.warmup:]],
           'loss': losses[args.warmup:]})
    del model, opt, params


# ----- the parent: children, table, JSON -----

def _ratio(rows, num, den):
  a, b = rows.get(num, {}).get('images_per_s'), rows.get(den, {}).get('images_per_s')
  return a / b if a and b else None


def ratios(rows):
  e, b = rows.get('e', {}).get('ms_per_step'), rows.get('b', {}).get('ms_per_step')
  g = rows.get('g', {}).get('ms_per_step')
  return {
      'jax_bf16_over_torch_fp32': _ratio(rows, 'b', 'f'),
      'jax_fp32_over_torch_fp32': _ratio(rows, 'a', 'f'),
      'jax_bf16_over_torch_bf16': _ratio(rows, 'b', 'f-bf16'),
      'augmentation_over_training_bf16': _ratio(rows, 'c', 'b'),
      'augmentation_over_training_fp32': _ratio(rows, 'c', 'a'),
      'k_parallel_over_sequential': _ratio(rows, 'd', 'b'),
      'rtd_added_ms_per_step': e - b if e and b else None,
      'rtd_lite_added_ms_per_step': g - b if g and b else None,
  }


def table(result):
  gib = lambda v, own=True: (f'{"" if own else "<="}{v / 2**30:.2f}') if v else '-'
  lines = [f'{"row":<7}{"what":<72}{"img/s":>9}{"ms/step":>9}{"1st s":>7}{"peak GiB":>9}'
           f'{"xla GiB":>8}']
  for row in ALL_ROWS:
    r = result['rows'].get(row)
    if r is None:
      continue
    if 'error' in r:
      lines.append(f'{row:<7}{r.get("title", ""):<72}  {r["error"][:100]}')
      continue
    lines.append(f'{row:<7}{r["title"][:71]:<72}{r["images_per_s"]:>9.1f}{r["ms_per_step"]:>9.1f}'
                 f'{r["compile_s"]:>7.1f}{gib(r.get("peak_bytes"), r.get("peak_is_row", True)):>9}'
                 f'{gib(r.get("xla_bytes")):>8}')
  for key, value in result['ratios'].items():
    lines.append(f'  {key:<36} {"-" if value is None else f"{value:.3f}"}')
  return '\n'.join(lines)


def _run_child(part, rows, args, deadline, on_record):
  cmd = [sys.executable, os.path.abspath(__file__), '--child', part, '--rows', ','.join(rows),
         '--warmup', str(args.warmup), '--steps', str(args.steps), '--members', str(args.members),
         '--rtd-warmup', str(args.rtd_warmup), '--rtd-steps', str(args.rtd_steps),
         '--torch-cudnn', args.torch_cudnn, '--cache-dir', args.cache_dir,
         '--compile', args.compile,
         '--batch', str(args.batch)] + (['--tiny'] if args.tiny else [])
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false', PYTHONUNBUFFERED='1',
             GPU_BENCH_T0=repr(_T0))
  if args.tiny and part == 'jax':  # a smoke run: halve XLA's CPU compile time
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
  # Same process group as this one: a signal to the group (timeout, Ctrl-C) reaches the children too.
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=ROOT)
  lines = queue.Queue()

  def pump():
    for line in proc.stdout:
      lines.put(line)
    lines.put(None)
  threading.Thread(target=pump, daemon=True).start()
  while True:
    left = deadline - time.time()
    if left <= 0:
      log(f'time limit (--budget-s {args.budget_s}) reached: stopping the {part} child')
      proc.kill()
      proc.wait()
      return
    try:
      line = lines.get(timeout=min(left, 5.0))
    except queue.Empty:
      continue
    if line is None:
      break
    if line.startswith(_MARK):
      on_record(json.loads(line[len(_MARK):]))
    else:
      print(line, end='', flush=True)
  if proc.wait():
    log(f'the {part} child exited with status {proc.returncode}')


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--tiny', '--smoke', action='store_true', dest='tiny',
                 help='CPU smoke run: ResNet18 width 8, 32 px')
  p.add_argument('--rows', default=','.join(ALL_ROWS), help='comma list of ' + ','.join(ALL_ROWS))
  p.add_argument('--warmup', type=int, default=None, help='warm-up steps (3; --tiny 1)')
  p.add_argument('--steps', type=int, default=None, help='timed steps (10; --tiny 2)')
  p.add_argument('--rtd-warmup', type=int, default=1)
  p.add_argument('--rtd-steps', type=int, default=2)
  p.add_argument('--members', type=int, default=4, help='K of row d')
  p.add_argument('--batch', type=int, default=0, help='batch per member (0: 256; --tiny 8)')
  p.add_argument('--budget-s', type=float, default=None,
                 help='time limit in seconds: stop the children after this and print what '
                 'finished (330; --smoke 1500, for a shared CPU)')
  p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'),
                 help='folder for gpu_bench.json (default bench/out)')
  p.add_argument('--torch-cudnn', choices=('reference', 'benchmark'), default='reference')
  p.add_argument('--cache-dir', default='', help='JAX compilation cache dir (default: none)')
  p.add_argument('--compile', choices=('parallel', 'serial'), default='serial',
                 help='serial: compile and time each JAX row in turn (a slow compile cannot '
                 'starve the rows before it); parallel: compile all concurrently, then time')
  p.add_argument('--child', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  rows = [r.strip() for r in args.rows.split(',') if r.strip()]
  bad = [r for r in rows if r not in ALL_ROWS]
  if bad or not rows:
    p.error(f'--rows: unknown row(s) {bad}; use a comma list of {",".join(ALL_ROWS)}')
  args.rows = rows
  args.budget_s = (1500.0 if args.tiny else 330.0) if args.budget_s is None else args.budget_s
  args.warmup = (1 if args.tiny else 3) if args.warmup is None else args.warmup
  args.steps = (2 if args.tiny else 10) if args.steps is None else args.steps
  for name in ('steps', 'rtd_steps', 'members'):
    if getattr(args, name) < 1:
      p.error(f'--{name.replace("_", "-")} must be >= 1')
  if args.warmup < 0 or args.rtd_warmup < 0 or args.batch < 0:
    p.error('--warmup, --rtd-warmup and --batch must be >= 0')
  return args


def main(argv=None):
  args = _parse(argv)
  if args.child:
    (run_jax if args.child == 'jax' else run_torch)(args, args.rows)
    return
  out_dir = args.out
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'gpu_bench.json')
  result = {'meta': {'argv': sys.argv[1:], 'sizes': sizes(args), 'warmup': args.warmup,
                     'steps': args.steps, 'started': time.strftime('%Y-%m-%d %H:%M:%S')},
            'rows': {}, 'ratios': {}}

  def on_record(rec):
    kind = rec.pop('kind')
    if kind == 'meta':
      result['meta'][rec.pop('part')] = rec
      return
    result['rows'][rec['id']] = rec
    result['ratios'] = ratios(result['rows'])
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)
    if 'error' not in rec:
      log(f'row {rec["id"]} done: {rec["images_per_s"]:.1f} img/s, {rec["ms_per_step"]:.1f} '
          f'ms/step ({rec["title"]})')

  deadline = _T0 + args.budget_s
  for part, order in (('torch', TORCH_ROWS), ('jax', JAX_ROWS)):
    rows = [r for r in order if r in args.rows]
    if rows:
      _run_child(part, rows, args, deadline, on_record)
  result['ratios'] = ratios(result['rows'])
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  missing = [r for r in args.rows if r not in result['rows']]
  print(table(result), flush=True)
  if missing:
    print(f'not run (--budget-s time limit or a crash above): {",".join(missing)}', flush=True)
  log(f'wrote {path}')
  failed = [r for r, rec in result['rows'].items() if 'error' in rec]
  return 1 if missing or failed else 0


if __name__ == '__main__':
  sys.exit(main())
