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

--lite: RTD-Lite against the exact RTD instead, side by side in one run. Forward + backward
(jax.jit(jax.value_and_grad), w.r.t. the current features) of RTDLiteLoss, RTDLoss with the
filtrations run serially (rtd.set_workers(0)) and RTDLoss with them in the process pool
(the default; its start-up is in the warm-up), each divided by one ResNet-50 train step
(SGD, cross-entropy, BN in train mode) at the same batch, --resnet-px pixels. Then the
agreement of the two losses over --pairs feature pairs whose current features drift by an
amount spread over [0.05, 1] (--agreement-n, --agreement-d): Pearson and Spearman
correlation of the values, the cosine of their gradients w.r.t. the current features, and
the ratio RTD / RTD-Lite (what scales an RTD beta to an RTD-Lite beta of the same size).

  python bench/bench_rtd.py --lite --n 64,128,256 --d 2048
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
from enstransfer_jax.losses import rtd  # pylint: disable=g-import-not-at-top,wrong-import-position
from enstransfer_jax.losses import rtd_lite_loss  # pylint: disable=g-import-not-at-top,wrong-import-position
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


def synthetic_features(rng, n, d, rank, noise=None):
  """ReLU features of width d with `rank` latent factors (full rank when rank is 0).

  Network features have a low intrinsic dimension; full-rank Gaussian features are the
  worst case for Vietoris-Rips persistence (almost equidistant points, many H1 pairs).
  """
  if rank == 0:
    reg = rng.normal(size=(n, d))
    cur = reg + (0.5 if noise is None else noise) * rng.normal(size=(n, d))
  else:
    z, w = rng.normal(size=(n, rank)), rng.normal(size=(rank, d)) / np.sqrt(rank)
    reg, cur = z @ w, (z + (0.3 if noise is None else noise) * rng.normal(size=(n, rank))) @ w
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


def resnet_step_ms(n, px, repeats):
  """Median ms of one ResNet-50 train step (SGD, cross-entropy, BN in train mode), batch n."""
  import optax  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('ResNet50', 100)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
      (logits, _), new = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                     mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new['batch_stats'], opt_state

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, px, px, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 100, n))
  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  return _median_ms(lambda: jax.block_until_ready(step(params, stats, opt_state, x, y)),
                    repeats)


def bench_lite(args):
  """The --lite tables: timings side by side, then the agreement of the two losses."""
  lite = jax.jit(jax.value_and_grad(lambda c, r: rtd_lite_loss(r, c)))
  exact = jax.jit(jax.value_and_grad(lambda c, r: rtd_loss(r, c, card=args.card)))
  d = int(args.d.split(',')[0])
  print(f'JAX device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, d={d}, '
        f'rank={args.rank}, card={args.card}, median of {args.repeats}, ResNet-50 at '
        f'{args.resnet_px} px')
  print(f'{"n":>5} {"lite ms":>8} {"serial ms":>10} {"pooled ms":>10} {"resnet ms":>10} '
        f'{"lite/rn":>8} {"serial/rn":>10} {"pooled/rn":>10} {"serial/lite":>12}')
  rng = np.random.default_rng(0)
  for n in (int(v) for v in args.n.split(',')):
    reg, cur = (jnp.asarray(f) for f in synthetic_features(rng, n, d, args.rank))
    timed = lambda fn: _median_ms(lambda: jax.block_until_ready(fn(cur, reg)), args.repeats)
    lite_ms = timed(lite)
    rtd.set_workers(0)
    serial_ms = timed(exact)
    rtd.set_workers(None)
    pooled_ms = timed(exact)
    rn_ms = resnet_step_ms(n, args.resnet_px, args.repeats) if args.resnet_px else float('nan')
    print(f'{n:>5} {lite_ms:>8.1f} {serial_ms:>10.1f} {pooled_ms:>10.1f} {rn_ms:>10.1f} '
          f'{lite_ms / rn_ms:>8.3f} {serial_ms / rn_ms:>10.3f} {pooled_ms / rn_ms:>10.3f} '
          f'{serial_ms / lite_ms:>12.1f}')
  agreement(args, lite, exact)


def agreement(args, lite, exact):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  n, d = args.agreement_n, args.agreement_d
  rng = np.random.default_rng(1)
  noises = np.geomspace(0.05, 1.0, args.pairs)
  values, cosines = [], []
  for noise in noises:
    reg, cur = (jnp.asarray(f) for f in synthetic_features(rng, n, d, args.rank, noise))
    (v_lite, g_lite), (v_exact, g_exact) = lite(cur, reg), exact(cur, reg)
    g_lite, g_exact = np.ravel(g_lite), np.ravel(g_exact)
    values.append((float(v_lite), float(v_exact)))
    cosines.append(float(g_lite @ g_exact / np.linalg.norm(g_lite) / np.linalg.norm(g_exact)))
  values = np.array(values)
  ratio = values[:, 1] / values[:, 0]
  print(f'\nagreement over {len(noises)} pairs, n={n}, d={d}, drift {noises[0]:.2f}..'
        f'{noises[-1]:.2f} (rank-{args.rank} latent noise):')
  print(f'{"drift":>6} {"RTD-Lite":>9} {"RTD":>9} {"RTD/Lite":>9} {"grad cos":>9}')
  for noise, (v_lite, v_exact), r, c in zip(noises, values, ratio, cosines):
    print(f'{noise:>6.3f} {v_lite:>9.4f} {v_exact:>9.4f} {r:>9.3f} {c:>9.3f}')
  print(f'Pearson {stats.pearsonr(values[:, 0], values[:, 1])[0]:.3f}, Spearman '
        f'{stats.spearmanr(values[:, 0], values[:, 1])[0]:.3f}; gradient cosine mean '
        f'{np.mean(cosines):.3f} (min {np.min(cosines):.3f}, max {np.max(cosines):.3f}); '
        f'RTD / RTD-Lite median {np.median(ratio):.3f} (min {ratio.min():.3f}, max '
        f'{ratio.max():.3f})')


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
  parser.add_argument('--lite', action='store_true',
                      help='RTD-Lite against RTD serial / pooled and a ResNet-50 step instead')
  parser.add_argument('--resnet-px', type=int, default=32,
                      help='--lite: image size of the ResNet-50 step (0: no ResNet step)')
  parser.add_argument('--pairs', type=int, default=16, help='--lite: feature pairs compared')
  parser.add_argument('--agreement-n', type=int, default=256)
  parser.add_argument('--agreement-d', type=int, default=2048)
  args = parser.parse_args()
  if args.lite:
    bench_lite(args)
    return
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
