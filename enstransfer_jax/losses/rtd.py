"""Differentiable Representation Topology Divergence (RTD) between two feature batches.

RTD (Barannikov et al., 2022) compares the topology of two point clouds on the same n
samples. With A = cdist(reg) / sqrt(d_reg) and B = cdist(cur) / sqrt(d_cur), the
thesis's loss is (rtd(A, B) + rtd(B, A)) / 2 where rtd(P, Q)

  1. builds the 2n x 2n filtration M = [[0, P^T], [P, min(P, Q)]],
  2. computes its Vietoris-Rips persistence in dimensions 1..dim on the host
     (giotto-ph's `ripser_parallel`, reached through `jax.pure_callback`),
  3. for every finite pair takes the birth edge and the death edge (the longest edge
     of the killing simplex, as giotto-ph's generators report it), keeps the `card`
     most persistent pairs (fewer are padded with zero-length pairs),
  4. reads birth values from one block matrix and death values from another (the
     reference's `immovable` option) and adds sum |death - birth|^lp.

Which matrices give the filtration, the births and the deaths follows the reference
(utils/fmap_loss.py, from danchern97/RTD_AE), written [[0, off^T], [off, low]]:

  term           filtration      births           deaths
  min, rtd(A,B)  [A, min(A,B)]   filtration       [A, B]
  min, rtd(B,A)  [B, min(A,B)]   filtration       [B, B]
  max, rtd(A,B)  [max(A,B), B]   [B, B]           filtration
  max, rtd(B,A)  [max(A,B), A]   [B, A]           filtration

mode="minimum" is RTDLoss (the first two rows); mode="minmax" is MinMaxRTDLoss (all
four). The loss is (sum of the rtd(A, B) rows + sum of the rtd(B, A) rows) / 2; as in
the reference, is_sym=False drops the rtd(B, A) rows but keeps the division by 2.

The pairing is piecewise constant in the inputs: the host returns integer indices
only, and gradients flow through the gathered distance entries (never through the
persistence computation). Under `jax.vmap` (ensemble members) one host call handles
the whole batch. Known differences to the reference: the reference's default engine
was ripser++ (GPU); the pairing here is giotto-ph's, which may break ties between
equal filtration values differently (values read from M agree, values read from the
second matrix can differ at exact ties); equally persistent pairs are ranked by a
stable sort (the reference's np.argsort is not stable). The loss jumps where the
pairing changes, so it is sensitive to rounding near ties: distances here come from
mean-centred rows (float32 error ~1e-7 relative), while torch.cdist's float32 matmul
path is less exact; on 256 x 2048 features the two differ by ~1%, and agree to 1e-6
when the reference is given the same (or float64) distances.

giotto-ph runs single-threaded on purpose: with n_threads > 1, giotto-ph 0.2.4 returns
generators that disagree with its own diagram (wrong birth edges in about 40% of runs
seen here, nondeterministically), which changes the loss. Its diagrams stay correct, so
only code that reads the generators (this loss, and the reference's giotto engine with
its default n_threads=25) is affected.

The filtrations of one host call (K members x T terms) run concurrently in a process pool
(forkserver, else spawn; never fork, which would copy an initialised accelerator runtime):
giotto-ph holds the GIL for a whole ripser call, so threads would not overlap. Each worker
runs the same single-threaded giotto-ph call on the same float64 matrix, so the pairs are
bit-identical to the serial path; the callback thread only waits on the futures.
set_workers(n) picks the pool size: 0 (the library's default, also None) runs serially in the
calling thread, so a plain script or a notebook cell can call rtd_loss; a negative n (the
engine's default, config.rtd_workers=-1) uses as many workers as filtrations, capped by the
cores. The pool starts on first use (a few seconds, once: each worker imports giotto-ph and
the main module, so a script that sets it must guard its entry point with
`if __name__ == '__main__':`, as main.py does); afterwards each
filtration costs a pickle of its 2n x 2n float64 matrix (2 MB at n = 256) to the worker.
"""

import atexit
import concurrent.futures
import functools
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

MODES = ('minimum', 'minmax')

# (side, filtration, births, deaths); a matrix is (off, low) naming the blocks of
# [[0, off^T], [off, low]]; 'filt' reuses the filtration matrix.
_TERMS = {
    'minimum': (
        ('xz', ('A', 'min'), 'filt', ('A', 'B')),
        ('zx', ('B', 'min'), 'filt', ('B', 'B')),
    ),
    'maximum': (
        ('xz', ('max', 'B'), ('B', 'B'), 'filt'),
        ('zx', ('max', 'A'), ('B', 'A'), 'filt'),
    ),
}


def pairwise_distances(x):
  """Euclidean distance matrix of the rows of x [n, d].

  Computed from the Gram matrix of the mean-centred rows (no [n, n, d] tensor);
  exactly symmetric with a zero diagonal, and its gradient is finite (zero) where two
  rows coincide, including the diagonal.
  """
  x = x - jnp.mean(x, axis=0, keepdims=True)
  sq = jnp.sum(x * x, axis=-1)
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  d2 = sq[:, None] + sq[None, :] - 2.0 * gram
  d2 = 0.5 * (d2 + d2.T)
  positive = (d2 > 0) & ~jnp.eye(x.shape[0], dtype=bool)
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _ripser_kwargs(dim):
  return dict(maxdim=dim, metric='precomputed', collapse_edges=False, n_threads=1,
              return_generators=True)


def _top_pairs(dm, gens, dim, card):
  out = np.zeros((dim, card, 4), np.int32)
  for k in range(dim):
    g = np.asarray(gens[k], dtype=np.int64).reshape(-1, 4)
    pers = dm[g[:, 2], g[:, 3]] - dm[g[:, 0], g[:, 1]]
    order = np.argsort(-pers, kind='stable')[:card]
    out[k, :len(order)] = g[order]
  return out


def persistence_pairs(dm, *, dim=1, card=50):
  """Top-`card` persistence pairs of the Vietoris-Rips filtration of `dm` (host, numpy).

  Args:
    dm: [m, m] symmetric distance matrix with zero diagonal.
    dim: highest homology dimension; dimensions 1..dim are returned.
    card: number of pairs kept per dimension, most persistent first.

  Returns:
    int32 [dim, card, 4]: (birth edge u, v, death edge u, v) per finite pair, sorted
    by persistence dm[death] - dm[birth] descending (stable), padded with zeros.
  """
  import gph  # pylint: disable=g-import-not-at-top  # lazy: the GPU box lacks it unless carried
  dm = np.asarray(dm, dtype=np.float64)
  rc = gph.ripser_parallel(dm, **_ripser_kwargs(dim))
  return _top_pairs(dm, rc['gens'][1], dim, card)


_WORKERS = 0  # see set_workers: serial unless the engine (or the caller) asks for the pool
_POOL = None  # (executor, size), created on first use


def set_workers(n):
  """Process-pool size for the filtrations of one host call: 0 or None = serial (default).

  A negative n runs as many filtrations at once as there are, up to the number of cores this
  process may use; a positive n at most n.
  """
  global _WORKERS, _POOL
  if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))):
    raise ValueError(f'rtd_workers must be an integer (0 = serial, -1 = one per filtration '
                     f'up to the cores), got {n!r}.')
  n = 0 if n is None else -1 if n < 0 else int(n)
  if n != _WORKERS and _POOL is not None:
    _POOL[0].shutdown(wait=False, cancel_futures=True)
    _POOL = None
  _WORKERS = n


def _cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _executor():
  """The pool, or None for the serial path."""
  global _POOL
  size = _cores() if _WORKERS < 0 else _WORKERS
  if size == 0:
    return None
  if _POOL is None:
    method = 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'
    # Workers start on demand, so at most min(filtrations, size) processes ever run.
    _POOL = (concurrent.futures.ProcessPoolExecutor(
        max_workers=size, mp_context=multiprocessing.get_context(method)), size)
  return _POOL[0]


@atexit.register
def _shutdown():
  """Stops the workers before the interpreter tears down the modules the pool uses."""
  global _POOL
  if _POOL is not None:
    _POOL[0].shutdown(wait=True, cancel_futures=True)
    _POOL = None


def _all_pairs(matrices, dim, card):
  """persistence_pairs of every matrix, in order: in the pool, or serially without one."""
  pool = _executor() if matrices else None
  if pool is None:
    return [persistence_pairs(m, dim=dim, card=card) for m in matrices]
  import gph  # pylint: disable=g-import-not-at-top
  try:
    futures = [pool.submit(gph.ripser_parallel, m, **_ripser_kwargs(dim)) for m in matrices]
    return [_top_pairs(m, f.result()['gens'][1], dim, card) for m, f in zip(matrices, futures)]
  except concurrent.futures.process.BrokenProcessPool as err:
    global _POOL
    _POOL = None
    raise RuntimeError("an RTD worker process died: a script that trains must start from "
                       "`if __name__ == '__main__':` (each worker imports it), or set "
                       'rtd_workers=0 to compute the persistence in this process') from err


def _host_matrix(spec, a, b):
  """The block matrix [[0, off^T], [off, low]] named by spec, in numpy."""
  comps = {'A': a, 'B': b, 'min': np.minimum(a, b), 'max': np.maximum(a, b)}
  off, low = comps[spec[0]], comps[spec[1]]
  return np.block([[np.zeros_like(off), off.T], [off, low]])


def _host_pairs(a, b, *, specs, dim, card):
  """pure_callback body: pairs for every filtration in specs, over any leading batch."""
  start = time.perf_counter()  # monotonic clock
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  lead, n = a.shape[:-2], a.shape[-1]
  a, b = a.reshape(-1, n, n), b.reshape(-1, n, n)
  matrices = [_host_matrix(spec, a[i], b[i]) for i in range(a.shape[0]) for spec in specs]
  idx = np.stack(_all_pairs(matrices, dim, card)).reshape(
      (a.shape[0], len(specs), dim, card, 4))
  # The call's wall time, shared evenly by the members (they ran concurrently).
  seconds = np.full(a.shape[0], (time.perf_counter() - start) / a.shape[0], np.float32)
  return idx.reshape(lead + idx.shape[1:]), seconds.reshape(lead)


def _component(name, a, b, i, j):
  if name == 'A':
    return a[i, j]
  if name == 'B':
    return b[i, j]
  if name == 'min':
    return jnp.minimum(a[i, j], b[i, j])
  return jnp.maximum(a[i, j], b[i, j])


def _entries(spec, a, b, u, v):
  """Entries (u, v) of the block matrix named by spec, gathered from a and b."""
  n = a.shape[0]
  top_u, top_v = u < n, v < n
  clip = lambda k: jnp.clip(k, 0, n - 1)
  # Cross block: off[row in the lower half, column in the upper half].
  cross = _component(spec[0], a, b, clip(jnp.where(top_u, v - n, u - n)),
                     clip(jnp.where(top_u, u, v)))
  low = _component(spec[1], a, b, clip(u - n), clip(v - n))
  zero = jnp.zeros_like(cross)
  return jnp.where(top_u & top_v, zero, jnp.where(top_u | top_v, cross, low))


def check_feature_pair(name, reg, cur):
  """One-line errors for two feature batches that are not [n, ...] of the same n samples."""
  if reg.ndim < 2 or cur.ndim < 2:
    raise ValueError(f'{name} expects features of shape [n, d] (or [n, ...]), got '
                     f'{reg.shape} and {cur.shape}; add the batch axis.')
  if reg.shape[0] != cur.shape[0]:
    raise ValueError(f'{name} needs the same samples in both batches, got n = '
                     f'{reg.shape[0]} and {cur.shape[0]}.')


def _validate(reg, cur, dim, card, lp, mode):
  check_feature_pair('rtd_loss', reg, cur)
  if mode not in MODES:
    raise ValueError(f'rtd_loss mode must be one of {MODES}, got {mode!r}.')
  for name, value in (('dim', dim), ('card', card)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'rtd_loss {name} must be an integer >= 1, got {value!r}.')
  if not lp > 0:
    raise ValueError(f'rtd_loss lp must be positive, got {lp!r}.')


@functools.partial(jax.jit, static_argnames=('dim', 'card', 'lp', 'is_sym', 'mode'))
def _rtd(reg, cur, *, dim, card, lp, is_sym, mode):
  """(loss, host seconds) for flattened features [n, d] and [n, d']."""
  dtype = jnp.result_type(reg.dtype, cur.dtype, jnp.float32)
  reg, cur = reg.astype(dtype), cur.astype(dtype)
  a = pairwise_distances(reg) / np.sqrt(reg.shape[1])
  b = pairwise_distances(cur) / np.sqrt(cur.shape[1])

  terms = _TERMS['minimum'] + (_TERMS['maximum'] if mode == 'minmax' else ())
  terms = tuple(t for t in terms if is_sym or t[0] == 'xz')
  specs = tuple(t[1] for t in terms)
  shapes = (jax.ShapeDtypeStruct((len(specs), dim, card, 4), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.float32))
  host = functools.partial(_host_pairs, specs=specs, dim=dim, card=card)
  idx, seconds = jax.pure_callback(host, shapes, jax.lax.stop_gradient(a),
                                   jax.lax.stop_gradient(b), vmap_method='broadcast_all')

  loss = jnp.zeros((), dtype)
  for t, (_, filt, births, deaths) in enumerate(terms):
    birth = _entries(filt if births == 'filt' else births, a, b, idx[t, ..., 0],
                     idx[t, ..., 1])
    death = _entries(filt if deaths == 'filt' else deaths, a, b, idx[t, ..., 2],
                     idx[t, ..., 3])
    diff = jnp.abs(death - birth)
    if lp == 1:
      loss = loss + jnp.sum(diff)
    else:
      nonzero = diff > 0
      loss = loss + jnp.sum(jnp.where(nonzero, jnp.where(nonzero, diff, 1.0) ** lp, 0.0))
  return loss / 2.0, seconds


def rtd_loss(reg_features, cur_features, *, dim=1, card=50, lp=1.0, is_sym=True,
             mode='minimum', return_aux=False):
  """RTD loss between regulariser features and current features.

  Args:
    reg_features: [n, d] (or [n, ...], flattened) features of the regulariser.
    cur_features: [n, d'] (or [n, ...]) features of the current model.
    dim: highest homology dimension (the thesis uses 1).
    card: most persistent pairs kept per dimension and term.
    lp: exponent of |death - birth|.
    is_sym: add the rtd(B, A) terms (the loss is divided by 2 either way).
    mode: 'minimum' (RTDLoss) or 'minmax' (MinMaxRTDLoss).
    return_aux: also return {'rtd_host_seconds': float32 wall time of the host callback,
      divided evenly among the members of a vmapped call}.

  Returns:
    The scalar loss, or (loss, aux) with return_aux.
  """
  reg, cur = jnp.asarray(reg_features), jnp.asarray(cur_features)
  _validate(reg, cur, dim, card, lp, mode)
  loss, seconds = _rtd(reg.reshape(reg.shape[0], -1), cur.reshape(cur.shape[0], -1),
                       dim=int(dim), card=int(card), lp=float(lp), is_sym=bool(is_sym), mode=mode)
  if return_aux:
    return loss, {'rtd_host_seconds': seconds}
  return loss
