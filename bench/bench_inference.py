"""ResNet-50 eval-mode inference throughput: Flax (jax.jit) vs PyTorch, same batch, same weights.

  python bench/bench_inference.py [--batch 8] [--size 224] [--iters 5] [--threads N]
                                  [--arch ResNet50] [--width 64]

The torch model is the torchvision-named twin of tests/torch_resnet.py with random
weights; the Flax model gets them through enstransfer_jax.checkpoints.torch_to_flax,
so both compute the same function (the max-abs difference of the logits is
printed). Torch runs under torch.inference_mode with --threads intra-op threads;
XLA's CPU thread pool gets the same count. When JAX runs on a GPU and torch sees
CUDA, torch runs there too (default TF32 settings of each library). Flax compile time is reported apart;
images/s comes from the median over --iters timed calls after one warm-up call,
flax and torch calls alternating so that machine load hits both alike.
Defaults take well under 2 minutes on a 2-core CPU.
"""

import argparse
import os
from pathlib import Path
import statistics
import sys
import time


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--iters', type=int, default=5)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--arch', default='ResNet50')
  p.add_argument('--width', type=int, default=64)
  args = p.parse_args(argv)
  for name in ('batch', 'size', 'iters', 'threads', 'width'):
    if getattr(args, name) < 1:
      p.error(f'--{name} must be >= 1')
  return args


def _time_interleaved(fns, iters):
  """Median seconds per call of each fn; calls alternate so load hits all alike."""
  for fn in fns:
    fn()  # warm-up
  times = [[] for _ in fns]
  for _ in range(iters):
    for fn, ts in zip(fns, times):
      start = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - start)
  return [statistics.median(ts) for ts in times]


def main(argv=None):
  args = _parse(argv)
  # XLA reads its thread count at backend start, so set it before importing jax.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_cpu_multi_thread_eigen=true'
                             f' intra_op_parallelism_threads={args.threads}')
  root = Path(__file__).resolve().parents[1]
  sys.path[:0] = [str(root), str(root / 'tests')]
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.checkpoints import torch_to_flax  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.models import create_model  # pylint: disable=g-import-not-at-top
  from torch_resnet import TorchResNet  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  tmodel = TorchResNet(args.arch, 1000, args.width).eval()
  variables = jax.device_put(torch_to_flax(tmodel.state_dict(), args.arch))
  model = create_model(args.arch, 1000, width=args.width)
  x = torch.randn(args.batch, 3, args.size, args.size)
  tdev = 'cuda' if torch.cuda.is_available() and jax.devices()[0].platform == 'gpu' else 'cpu'
  tmodel, xt = tmodel.to(tdev), x.to(tdev)
  xj = jax.device_put(x.numpy().transpose(0, 2, 3, 1))

  apply = jax.jit(lambda v, im: model.apply(v, im, train=False)[0])
  start = time.perf_counter()
  compiled = apply.lower(variables, xj).compile()
  compile_s = time.perf_counter() - start

  def torch_fwd():
    with torch.inference_mode():
      out = tmodel(xt)[0]
    if tdev == 'cuda':
      torch.cuda.synchronize()
    return out
  flax_s, torch_s = _time_interleaved(
      [lambda: compiled(variables, xj).block_until_ready(), torch_fwd], args.iters)

  diff = np.abs(np.asarray(compiled(variables, xj)) - torch_fwd().cpu().numpy()).max()
  print(f'{args.arch} (width {args.width}) eval, batch {args.batch}, {args.size} px, '
        f'{args.threads} threads, median of {args.iters}; jax {jax.__version__} on '
        f'{jax.devices()[0].platform}, torch {torch.__version__} on {tdev}')
  print(f'{"framework":<16}{"ms/batch":>10}{"images/s":>10}')
  for name, sec in (('flax (jit)', flax_s), ('torch', torch_s)):
    print(f'{name:<16}{1e3 * sec:>10.1f}{args.batch / sec:>10.1f}')
  print(f'flax/torch throughput ratio: {torch_s / flax_s:.2f}   '
        f'flax compile: {compile_s:.1f} s   max |logits diff|: {diff:.1e}')


if __name__ == '__main__':
  main()
