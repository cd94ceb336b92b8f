"""Times the RTD loss, forward + backward, in JAX and (optionally) the reference PyTorch code.

JAX: jax.jit(jax.value_and_grad(rtd_loss)) with respect to the current features.
PyTorch: the reference's utils/fmap_loss.py RTDLoss / MinMaxRTDLoss, imported from a
scratch checkout (never copied into this repository), with engine='giotto' and the same
distance computation as its FeatureMapLoss (torch.cdist / sqrt(d)), then .backward().
Both use giotto-ph for the persistence, so they also compute the same loss value; the
table prints both values as a cross-check.

Making the reference importable needs three shims, applied in this process only:
ripserplusplus (its top-level import, a GPU package) is stubbed in sys.modules; the
commented-out `ripser_parallel` is injected into the module as an adapter that calls
gph.ripser_parallel(return_generators=True) and returns the ripser++ style 'pairs' the
reference reads (its giotto branch reads rc['pairs'], which giotto-ph does not return);
and numpy >= 2 lost np.compat.long, which the reference uses. The reference's giotto
default n_threads=25 is replaced by --reference-threads (default 1): giotto-ph 0.2.4's
generators are wrong now and then when it runs multi-threaded (see losses/rtd.py).

  mkdir -p /tmp/ref_rtd && git -C /work/.mirror/tgritsaev+ens-hse-diploma/repo \
      archive HEAD utils | tar -x -C /tmp/ref_rtd
  python bench/bench_rtd.py --reference-dir /tmp/ref_rtd --n 256 --d 2048
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from enstransfer_jax.losses import rtd_loss  # pylint: disable=g-import-not-at-top,wrong-import-position


def _ripser_parallel_adapter(dm, maxdim=1, n_threads=1, **kwargs):
  """gph.ripser_parallel, returning the ripser++ 'pairs' layout the reference reads."""
  import gph  # pylint: disable=g-import-not-at-top
  del kwargs  # metric='precomputed', collapse_edges=False as the reference passes.
  dm = np.asarray(dm, dtype=np.float64)
  rc = gph.ripser_parallel(dm, maxdim=maxdim, metric='precomputed', collapse_edges=False,
                           n_threads=n_threads, return_generators=True)
  dgms, pairs = [np.zeros((0, 2))], [[]]
  for gens in rc['gens'][1]:
    gens = np.asarray(gens, np.int64).reshape(-1, 4)
    dgms.append(np.stack([dm[gens[:, 0], gens[:, 1]], dm[gens[:, 2], gens[:, 3]]], 1))
    pairs.append([(list(g[:2]), list(g[2:])) for g in gens])
  return {'dgms': dgms, 'pairs': pairs}


def load_reference(reference_dir):
  """Imports <reference_dir>/utils/fmap_loss.py with the shims described above."""
  path = os.path.join(reference_dir, 'utils', 'fmap_loss.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found; create the scratch checkout as shown in '
                            'this script\'s docstring.')
  sys.modules.setdefault('ripserplusplus', types.ModuleType('ripserplusplus'))
  if not hasattr(np, 'compat'):
    np.compat = types.SimpleNamespace(long=np.int64)
  spec = importlib.util.spec_from_file_location('reference_fmap_loss', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.ripser_parallel = _ripser_parallel_adapter
  return module


def synthetic_features(rng, n, d, rank):
  """ReLU features of width d with `rank` latent factors (full rank when rank is 0).

  Network features have a low intrinsic dimension; full-rank Gaussian features are the
  worst case for Vietoris-Rips persistence (almost equidistant points, many H1 pairs).
  """
  if rank == 0:
    reg = rng.normal(size=(n, d))
    cur = reg + 0.5 * rng.normal(size=(n, d))
  else:
    z, w = rng.normal(size=(n, rank)), rng.normal(size=(rank, d)) / np.sqrt(rank)
    reg, cur = z @ w, (z + 0.3 * rng.normal(size=(n, rank))) @ w
  return np.maximum(reg, 0).astype(np.float32), np.maximum(cur, 0).astype(np.float32)


def _median_ms(fn, repeats):
  fn()  # warm-up (compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def bench_jax(reg, cur, mode, card, repeats):
  step = jax.jit(jax.value_and_grad(
      lambda c, r: rtd_loss(r, c, mode=mode, card=card, return_aux=True), has_aux=True))
  cur, reg = jnp.asarray(cur), jnp.asarray(reg)
  out = {}

  def run():
    (value, aux), grad = step(cur, reg)
    jax.block_until_ready(grad)
    out.update(value=float(value), host=float(aux['rtd_host_seconds']))

  ms = _median_ms(run, repeats)
  return ms, out['value'], 1e3 * out['host']


def _torch_device():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def bench_torch(module, reg, cur, mode, card, n_threads, repeats, device):
  import torch  # pylint: disable=g-import-not-at-top
  cls = module.RTDLoss if mode == 'minimum' else module.MinMaxRTDLoss
  loss_fn = cls(card=card, engine='giotto', n_threads=n_threads)
  reg_t = torch.from_numpy(np.array(reg)).to(device)
  out = {}

  def run():
    cur_t = torch.from_numpy(np.array(cur)).to(device).requires_grad_(True)
    reg_dist = torch.cdist(reg_t, reg_t) / np.sqrt(reg_t.shape[1])
    cur_dist = torch.cdist(cur_t, cur_t) / np.sqrt(cur_t.shape[1])
    _, _, loss = loss_fn(reg_dist, cur_dist)
    loss.backward()
    if device == 'cuda':
      torch.cuda.synchronize()
    out['value'] = loss.item()

  return _median_ms(run, repeats), out['value']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', default='256', help='batch sizes, comma separated')
  parser.add_argument('--d', default='2048', help='feature widths, comma separated')
  parser.add_argument('--mode', default='minimum', choices=('minimum', 'minmax'))
  parser.add_argument('--card', type=int, default=50)
  parser.add_argument('--reference-threads', type=int, default=1,
                      help='giotto-ph threads of the reference (> 1 gives wrong generators)')
  parser.add_argument('--rank', type=int, default=16,
                      help='intrinsic dimension of the synthetic features (0: full rank)')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--reference-dir', default=None,
                      help='scratch checkout holding utils/fmap_loss.py of the reference')
  args = parser.parse_args()
  module = load_reference(args.reference_dir) if args.reference_dir else None
  torch_device = _torch_device() if module else None

  print(f'JAX device: {jax.devices()[0].device_kind}, torch device: {torch_device}, '
        f'mode={args.mode}, card={args.card}, rank={args.rank}, '
        f'reference n_threads={args.reference_threads}, median of {args.repeats}')
  print(f'{"n":>5} {"d":>6} {"JAX ms":>9} {"host ms":>8} {"torch ms":>9} {"ratio":>6} '
        f'{"JAX loss":>10} {"torch loss":>10}')
  rng = np.random.default_rng(0)
  for n in (int(v) for v in args.n.split(',')):
    for d in (int(v) for v in args.d.split(',')):
      reg, cur = synthetic_features(rng, n, d, args.rank)
      jax_ms, jax_value, host_ms = bench_jax(reg, cur, args.mode, args.card, args.repeats)
      row = f'{n:>5} {d:>6} {jax_ms:>9.1f} {host_ms:>8.1f} '
      if module is None:
        print(row + f'{"-":>9} {"-":>6} {jax_value:>10.5f} {"-":>10}')
        continue
      torch_ms, torch_value = bench_torch(module, reg, cur, args.mode, args.card,
                                          args.reference_threads, args.repeats, torch_device)
      print(row + f'{torch_ms:>9.1f} {torch_ms / jax_ms:>6.2f} {jax_value:>10.5f} '
            f'{torch_value:>10.5f}')


if __name__ == '__main__':
  main()
