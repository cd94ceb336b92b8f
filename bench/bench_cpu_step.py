"""CPU: the engine's train step against a PyTorch twin's step, side by side, and where the time goes.

  python bench/bench_cpu_step.py [--variants xla,im2col,...] [--width 64] [--batch 64]
      [--rounds 12] [--warmup 2] [--threads 0] [--profile]

The JAX side is the engine's own jitted step (training/step.py, built as a stage builds it,
through bench/gpu_bench.py's build_engine): ResNet18 at --width, uint8 32x32 images with the
'cifar' transform (pad 4, random crop, flip) inside the step, float32, K=1 member, batch --batch,
SGD momentum 0.9, weight decay 1e-4, cross-entropy. The PyTorch side is tests/torch_resnet.py's
twin (torchvision's layout) in train mode: zero_grad, forward, cross-entropy, backward,
SGD(0.05, 0.9, wd 1e-4).step() on a float32 batch already in memory (no augmentation: torchvision
augments in the DataLoader, off the step).

Each variant runs in its own process (XLA_FLAGS must be set before JAX starts), which builds both
steps and then alternates them --rounds times: JAX step (block_until_ready), torch step, JAX,
torch, ... The medians after --warmup rounds are reported, and `torch/jax` = torch median / JAX
median (> 1: JAX is faster). Alternating in one process makes the ratio fair on a busy machine;
the load average is printed before and after each variant.

Variants (name: lowering of the convolutions, extra XLA flags):
%(variants)s
(a lowering with a suffix: the 'cpu' lowering with the step changed as follows)
The two changed steps, cpu+bn-onepass (BatchNorm's statistics in one reduction pass,
moments_one_pass below) and cpu+noaug (the 'none' transform: the images only normalised, no pad,
crop or flip in the step: the step with its augmentation moved off it), are built beside the
unchanged 'cpu' step in the same process, and each round runs the unchanged step and the
changed step (which one first alternates from round to round), then the torch step; the median
of the per-round ratios changed / unchanged is reported. cpu+same builds the unchanged step twice
(the ratio an unchanged step gets: this machine's noise).

--threads N: torch.set_num_threads(N), and for N = 1 XLA's --xla_cpu_multi_thread_eigen=false
(one compute thread on both sides; 0 = each library's default, all cores).
--layers: instead, each convolution shape of ResNet18 at 32 px alone (forward + both gradients,
batch --batch) under the 'xla' and 'im2col' lowerings.
--profile: after the timed rounds, one jax.profiler trace of 3 JAX steps and one torch.profiler
run of 3 torch steps, summed per step into: convolution forward, gradient wrt the convolution's
input, gradient wrt its weights, BatchNorm forward / backward, the augmentation, the optimizer,
the rest of the model (ReLU, max-pool, residual adds, pooling, fc, loss) and the host time per
step not covered by an operation. JAX's categories come from the compiled HLO (each executed
operation's name stack and source file); torch's from the profiler's aten operations (torch
computes both convolution gradients in one aten::convolution_backward).
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_MARK = '@@ '

# name -> (convolution lowering, extra XLA flags)
VARIANTS = {
    'xla': ('xla', ''),
    'cpu': ('cpu', ''),
    'im2col': ('im2col', ''),
    'xla+onednn': ('xla', '--xla_cpu_use_onednn=true'),
    'cpu+onednn': ('cpu', '--xla_cpu_use_onednn=true'),
    'cpu+xnn-dot': ('cpu', '--xla_cpu_experimental_xnn_fusion_type=dot'),
    'cpu+ynn-off': ('cpu', '--xla_cpu_experimental_ynn_fusion_type='),
    'cpu+ynn-conv': ('cpu', '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'),
    'cpu+1thread': ('cpu', '--xla_cpu_multi_thread_eigen=false'),
    'xla+nchw': ('xla-nchw', ''),
    'cpu+bn-onepass': ('cpu-bnonepass', ''),
    'cpu+noaug': ('cpu-noaug', ''),
    'cpu+same': ('cpu-same', ''),
}
CATEGORIES = ('conv forward', 'conv grad input', 'conv grad weight', 'BN forward',
              'BN backward', 'augmentation', 'optimizer', 'other model + loss',
              'host / not in an op')


def _doc():
  return __doc__ % {'variants': '\n'.join(f'  {k:<16}{v[0]:<8} {v[1] or "(defaults)"}'
                                          for k, v in VARIANTS.items())}


# ----- the child: one variant -----

def _torch_step(width, batch, threads):
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  from torch_resnet import TorchResNet  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = TorchResNet('ResNet18', 100, width).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
  x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))

  def step():
    opt.zero_grad()
    logits, _ = model(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    opt.step()
  return step


def moments_one_pass(x, axes):
  """batchnorm.moments in one reduction pass over x: the sums of d = x - k and of d * d, with k
  the first value of each channel (shifted data: float32 keeps the variance's digits when the
  mean is far from 0), mean = k + sum(d) / n, var = sum(d * d) / n - (sum(d) / n) ** 2."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  k = jax.lax.stop_gradient(x[(0,) * len(axes)])
  d = x - k
  n = x.size // x.shape[-1]
  m1, m2 = jnp.sum(d, axis=axes) / n, jnp.sum(d * d, axis=axes) / n
  return k + m1, jnp.maximum(m2 - m1 * m1, 0.0)


def _hlo_index(text):
  """instruction name -> (op_name, [source files], output dims) from compiled HLO text."""
  files, locs, frames = {}, {}, {}
  section = None
  for line in text.splitlines():
    s = line.strip()
    if s in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      section = s
      continue
    if section and re.match(r'^\d+ ', s):
      i, rest = s.split(' ', 1)
      if section == 'FileNames':
        files[int(i)] = rest.strip('"')
      elif section == 'FileLocations':
        locs[int(i)] = int(re.search(r'file_name_id=(\d+)', rest).group(1))
      elif section == 'StackFrames':
        m = re.search(r'file_location_id=(\d+) parent_frame_id=(\d+)', rest)
        frames[int(i)] = (int(m.group(1)), int(m.group(2)))
      continue
    if not s:
      section = None

  def chain(frame):
    out, seen = [], set()
    while frame in frames and frame not in seen:
      seen.add(frame)
      loc, parent = frames[frame]
      out.append(os.path.basename(files.get(locs.get(loc), '')))
      frame = parent
    return out

  index = {}
  pat = re.compile(r'^(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]')
  for line in text.splitlines():
    m = pat.match(line.strip())
    if not m:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    fr = re.search(r'stack_frame_id=(\d+)', line)
    dims = tuple(int(d) for d in m.group(2).split(',') if d)
    index[m.group(1)] = (op.group(1) if op else '', chain(int(fr.group(1))) if fr else [], dims)
  return index


def _kernel_shapes(params):
  """'layer3/1/conv1' -> kernel shape (without the member axis)."""
  out = {}

  def walk(tree, path):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, path + (k,))
      elif k == 'kernel' and v.ndim == 5:
        out['/'.join(path)] = tuple(v.shape[1:])
  walk(params, ())
  return out


def _jax_category(name, index, kernels):
  op_name, files, dims = index.get(name, ('', [], ()))
  backward = 'transpose(' in op_name
  if not op_name and re.match(r'(dot|convolution|ynn_fusion|xnn_fusion|onednn)', name):
    # a matrix product that lost its metadata: those are the backward pass's; a weight
    # gradient when it is shaped [taps * in, out] (or transposed) for one of the kernels
    squeezed = tuple(d for d in dims if d != 1)
    for kh, kw, cin, cout in kernels.values():
      for taps in range(1, kh * kw + 1):
        if squeezed in ((taps * cin, cout), (cout, taps * cin)):
          return 'conv grad weight'
    return 'conv grad input'
  if 'augment.py' in files:
    return 'augmentation'
  if 'optim.py' in files or 'opt_state' in op_name:
    return 'optimizer'
  path = re.sub(r'^.*?\)\)?/', '', op_name)
  module = next((k for k in sorted(kernels, key=len, reverse=True) if '/' + k + '/' in
                 '/' + path), None)
  if module is not None:
    kh, kw, cin, cout = kernels[module]
    if not backward:
      return 'conv forward'
    squeezed = tuple(d for d in dims if d != 1)
    weight_like = (sorted(squeezed) == sorted(d for d in (kh, kw, cin, cout) if d != 1) or
                   (len(squeezed) == 2 and squeezed[1] == cout and squeezed[0] % cin == 0 and
                    squeezed[0] // cin <= kh * kw))
    return 'conv grad weight' if weight_like else 'conv grad input'
  if re.search(r'(^|/)(bn\d|downsample/1)(/|$)', path) or 'batchnorm.py' in files[:1]:
    return 'BN backward' if backward else 'BN forward'
  return 'other model + loss'


def _profile_jax(compiled, state, run, steps, params):
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  index = _hlo_index(compiled.as_text())
  kernels = _kernel_shapes(params)
  d = tempfile.mkdtemp(prefix='bench_cpu_trace_')
  try:
    jax.profiler.start_trace(d)
    start = time.perf_counter()
    for i in range(steps):
      state, m = run(compiled, state, i)
      jax.block_until_ready((state, m))
    wall = (time.perf_counter() - start) / steps
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(d + '/**/*.xplane.pb', recursive=True)[0])
    sums = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if 'python' in line.name.lower():
          continue
        for ev in line.events:
          if ev.name in index:
            sums[_jax_category(ev.name, index, kernels)] += ev.duration_ns / 1e6 / steps
  finally:
    shutil.rmtree(d, ignore_errors=True)
  sums['host / not in an op'] = 1e3 * wall - sum(sums.values())
  return state, dict(sums), 1e3 * wall


_TORCH_CATS = [  # (category, aten op whose total time counts), checked in order
    ('conv forward', 'aten::conv2d'),
    ('conv grad input+weight', 'aten::convolution_backward'),
    ('BN forward', 'aten::batch_norm'),
    ('BN backward', 'aten::native_batch_norm_backward'),
    ('optimizer', 'Optimizer.step#SGD.step'),
    ('optimizer', 'Optimizer.zero_grad#SGD.zero_grad'),
]


def _profile_torch(step, steps):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      step()
    wall = (time.perf_counter() - start) / steps
  totals = {e.key: e.cpu_time_total / 1e3 / steps for e in prof.key_averages()}
  sums = collections.Counter()
  for cat, key in _TORCH_CATS:
    sums[cat] += totals.get(key, 0.0)
  sums['other (ReLU, pool, adds, fc, loss, autograd)'] = 1e3 * wall - sum(sums.values())
  return dict(sums), 1e3 * wall


def run_variant(args):
  conv, flags = VARIANTS[args.variant]
  if args.threads == 1:
    flags = (flags + ' --xla_cpu_multi_thread_eigen=false').strip()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + flags).strip()
  os.environ['ENSTRANSFER_CONV'] = conv.split('-')[0]
  sys.path.insert(0, HERE)
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import gpu_bench  # pylint: disable=g-import-not-at-top
  if conv == 'xla-nchw':  # the same convolution on NCHW / OIHW operands
    from enstransfer_jax.models import cpu_ops as conv_lib  # pylint: disable=g-import-not-at-top

    def nchw(x, kernel, stride, pad):
      y = jax.lax.conv_general_dilated(
          x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1), (stride, stride),
          ((pad, pad), (pad, pad)), dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
      return y.transpose(0, 2, 3, 1)
    conv_lib.conv_xla = nchw
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(secs) if event.endswith(
          'backend_compile_duration') else None)
  change = conv.split('-')[1] if conv.split('-')[1:] in (['bnonepass'], ['noaug'], ['same']) \
      else ''
  config = gpu_bench.engine_config('ResNet18', args.width, 32, args.batch, transform='cifar')
  lowered, state, run = gpu_bench.build_engine(config, 1)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  steps = [[compiled, state, run, []]]
  if change:  # the changed step beside the unchanged one, alternating in this process
    from enstransfer_jax.models import batchnorm  # pylint: disable=g-import-not-at-top
    two_pass = batchnorm.moments
    if change == 'bnonepass':  # BatchNorm's statistics in one reduction pass
      batchnorm.moments = moments_one_pass
    elif change == 'noaug':  # the 'none' transform: normalisation only, no pad / crop / flip
      config = gpu_bench.engine_config('ResNet18', args.width, 32, args.batch, transform='none')
    lowered2, state2, run2 = gpu_bench.build_engine(config, 1)  # traced here
    batchnorm.moments = two_pass
    steps.append([lowered2.compile(), state2, run2, []])
  params = jax.device_get(state.params)
  torch_step = _torch_step(args.width, args.batch, args.threads)
  load_before = os.getloadavg()[0]
  tt = []
  for i in range(args.warmup + args.rounds):
    for entry in (steps if i % 2 == 0 else steps[::-1]):  # which one runs first alternates
      fn, st, step_run, times = entry
      start = time.perf_counter()
      st, m = step_run(fn, st, i)
      jax.block_until_ready((st, m))
      times.append(time.perf_counter() - start)
      entry[1] = st
    start = time.perf_counter()
    torch_step()
    tt.append(time.perf_counter() - start)
  jt = steps[-1][3]  # the variant's own step (the changed one where there are two)
  state = steps[0][1]
  jax_ms, torch_ms = (1e3 * statistics.median(t[args.warmup:]) for t in (jt, tt))
  record = {'variant': args.variant, 'conv': conv, 'xla_flags': os.environ['XLA_FLAGS'],
            'jax_ms': jax_ms, 'torch_ms': torch_ms, 'torch_over_jax': torch_ms / jax_ms,
            'compile_s': compile_s, 'compiles': len(compiles),
            'load': [load_before, os.getloadavg()[0]],
            'jax_all_ms': [round(1e3 * t, 1) for t in jt],
            'torch_all_ms': [round(1e3 * t, 1) for t in tt]}
  if change:
    base = steps[0][3]
    record['base_ms'] = 1e3 * statistics.median(base[args.warmup:])
    record['base_all_ms'] = [round(1e3 * t, 1) for t in base]
    # per round, changed / unchanged step: the median of the paired ratios
    record['changed_over_base'] = statistics.median(
        a / b for a, b in zip(jt[args.warmup:], base[args.warmup:]))
  if args.profile:
    state, record['jax_profile'], record['jax_profile_wall_ms'] = _profile_jax(
        compiled, state, run, 3, params)
    record['torch_profile'], record['torch_profile_wall_ms'] = _profile_torch(torch_step, 3)
  print(_MARK + json.dumps(record), flush=True)


def run_layers(args):
  """--layers: each convolution shape of ResNet18 at 32 px, forward + both gradients, under
  the 'xla' and 'im2col' lowerings (median of 5 after one call; --threads 1 as above)."""
  if args.threads == 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false').strip()
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.models import cpu_ops  # pylint: disable=g-import-not-at-top
  w = args.width
  shapes = [('conv1 (stem) 7x7/2', 32, 3, w, 7, 2, 3), ('layer1 3x3/1', 8, w, w, 3, 1, 1),
            ('layer2.0.conv1 3x3/2', 8, w, 2 * w, 3, 2, 1),
            ('layer2.0.downsample 1x1/2', 8, w, 2 * w, 1, 2, 0),
            ('layer2 3x3/1', 4, 2 * w, 2 * w, 3, 1, 1),
            ('layer3.0.conv1 3x3/2', 4, 2 * w, 4 * w, 3, 2, 1),
            ('layer3 3x3/1', 2, 4 * w, 4 * w, 3, 1, 1),
            ('layer4.0.conv1 3x3/2', 2, 4 * w, 8 * w, 3, 2, 1),
            ('layer4 3x3/1', 1, 8 * w, 8 * w, 3, 1, 1),
            ('layer4.0.downsample 1x1/2', 2, 4 * w, 8 * w, 1, 2, 0)]
  print(f'{"convolution":<28}{"input":>12}{"xla ms":>10}{"im2col ms":>11}{"xla/im2col":>12}')
  for name, h, cin, cout, k, stride, pad in shapes:
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, h, h, cin))
    kernel = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
    ms = []
    for fn in (cpu_ops.conv_xla, cpu_ops.conv_im2col):
      grad = jax.jit(jax.value_and_grad(
          lambda a, b, fn=fn: jnp.sum(fn(a, b, stride, pad) ** 2), (0, 1)))
      jax.block_until_ready(grad(x, kernel))
      times = []
      for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(grad(x, kernel))
        times.append(time.perf_counter() - start)
      ms.append(1e3 * statistics.median(times))
    print(f'{name:<28}{f"{h}x{h}x{cin}":>12}{ms[0]:>10.2f}{ms[1]:>11.2f}{ms[0] / ms[1]:>12.2f}',
          flush=True)


# ----- the parent -----

def _child(variant, args):
  cmd = [sys.executable, os.path.abspath(__file__), '--variant', variant, '--width',
         str(args.width), '--batch', str(args.batch), '--rounds', str(args.rounds), '--warmup',
         str(args.warmup), '--threads', str(args.threads)] + ['--profile'] * args.profile
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  marked = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not marked:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return {'variant': variant, 'error': f'exit {proc.returncode}: {tail[0]}'}
  return json.loads(marked[-1][len(_MARK):])


def _print_profile(name, prof, wall):
  print(f'  {name} per step (ms), wall {wall:.1f}:')
  for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
    print(f'    {k:<46}{v:8.1f}  {100 * v / wall:5.1f}%')


def _parse(argv):
  p = argparse.ArgumentParser(description=_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--variants', default='xla,cpu',
                 help=f'comma-separated, from: {", ".join(VARIANTS)}')
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--rounds', type=int, default=12, help='timed rounds (one JAX + one torch step)')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--threads', type=int, default=0, help='compute threads (0: defaults)')
  p.add_argument('--profile', action='store_true')
  p.add_argument('--layers', action='store_true',
                 help='time each convolution shape under both lowerings instead')
  p.add_argument('--json', help='also write the records to this file')
  p.add_argument('--variant', choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child
  args = p.parse_args(argv)
  for name in ('width', 'batch', 'rounds'):
    if getattr(args, name) < 1:
      p.error(f'--{name} must be >= 1')
  if args.warmup < 0 or args.threads < 0:
    p.error('--warmup and --threads must be >= 0')
  unknown = [v for v in args.variants.split(',') if v not in VARIANTS]
  if unknown:
    p.error(f'unknown variant(s) {", ".join(unknown)}; use names from {", ".join(VARIANTS)}')
  return args


def main(argv=None):
  args = _parse(argv)
  if args.variant:
    run_variant(args)
    return
  if args.layers:
    print(f'python bench/bench_cpu_step.py {" ".join(sys.argv[1:])}; load '
          f'{os.getloadavg()[0]:.1f}', flush=True)
    run_layers(args)
    return
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f'python bench/bench_cpu_step.py {" ".join(sys.argv[1:])}')
  print(f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}, torch {torch.__version__}, ResNet18 width {args.width}, 32 px, '
        f'batch {args.batch}, threads {args.threads or "default"}', flush=True)
  records = []
  for variant in args.variants.split(','):
    r = _child(variant, args)
    records.append(r)
    if 'error' in r:
      print(f'{variant}: failed, {r["error"]}', flush=True)
      continue
    print(f'{variant:<16} jax {r["jax_ms"]:8.1f} ms  torch {r["torch_ms"]:8.1f} ms  '
          f'torch/jax {r["torch_over_jax"]:5.2f}  compile {r["compile_s"]:5.1f} s  '
          f'load {r["load"][0]:.1f}-{r["load"][1]:.1f}', flush=True)
    if 'base_ms' in r:
      print(f'{"":<16} unchanged cpu step in the same process {r["base_ms"]:8.1f} ms  '
            f'torch/jax {r["torch_ms"] / r["base_ms"]:5.2f}; changed/unchanged per round '
            f'(median) {r["changed_over_base"]:5.3f}', flush=True)
    if args.profile:
      _print_profile('JAX', r['jax_profile'], r['jax_profile_wall_ms'])
      _print_profile('torch', r['torch_profile'], r['torch_profile_wall_ms'])
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=1)


if __name__ == '__main__':
  main()
