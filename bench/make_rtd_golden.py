"""Freezes golden values of the exact RTD loss computed by the reference's own PyTorch code.

  git clone https://github.com/tgritsaev/ens-hse-diploma /tmp/ref_rtd
  git -C /tmp/ref_rtd checkout 5f35842bb63de4de2789ac3a1fcfd156d7c25c08
  python bench/make_rtd_golden.py --reference-dir /tmp/ref_rtd --out tests/data/rtd_reference.npz

(--reference-commit names the commit when DIR is not a git work tree.)

DIR is a checkout of ens-hse-diploma (never part of this repository). For a few small,
deterministic feature pairs (CASES below: n = 8, 16, 32 points, d = 4..64, with duplicate
points, low-rank and ReLU features, one case whose `card` truncates the pairs) the script
runs the reference's FeatureMapLoss (utils/fmap_loss.py) exactly as its training loop does,
with fmap_betas one on a single map: the distances are its own
torch.cdist(x, x, p=2) / sqrt(d), the loss is its RTDLoss (fmap_loss_type='RTDLoss', the
thesis's) or MinMaxRTDLoss, with the settings the reference's configs use (they set none, so
its defaults: dim 1, card 50, lp 1, is_sym True, engine 'ripser'). Everything is float64
(torch.set_default_dtype). It stores the inputs, the loss and its gradient with respect to the
current features (loss.backward()) in an .npz that tests/test_rtd_reference_golden.py compares
with enstransfer_jax.losses.rtd_loss, with no torch and no reference needed there.

The reference's code runs unchanged; what the script supplies (in this process only, reusing
the shims of bench/bench_rtd.py and bench/parity_reference.py):
  * ripserplusplus (GPU only, the reference's engine 'ripser'): `run` answers with giotto-ph's
    pairs of the same matrix (birth edge, death edge = the longest edge of the killing
    triangle; parity_reference._ripserpp_run, giotto-ph single-threaded). As a cross-check
    every value is also computed with the reference's engine='giotto' branch
    (bench_rtd.load_reference's adapter, n_threads=1) and must agree exactly;
  * numpy >= 2 has no np.compat.long (used by the reference): set to np.int64.
The golden values are therefore the reference's loss under giotto-ph's pairing; ripser++ could
break exact ties between filtration values differently (see losses/rtd.py).

The .npz holds, per case NAME: NAME__reg [n, d], NAME__cur [n, d], NAME__card (int), and for
MODE in minimum, minmax: NAME__loss_MODE (scalar) and NAME__grad_MODE [n, d]; plus `cases`
(the names, in order) and `meta` (a JSON string: reference commit and sha256 of
utils/fmap_loss.py, settings, the ripser++ stand-in, versions, date).
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

# The reference's RTDLoss / MinMaxRTDLoss defaults; its configs set none of them.
SETTINGS = dict(dim=1, card=50, lp=1.0, is_sym=True, dist_p=2.0)
MODES = {'minimum': 'RTDLoss', 'minmax': 'MinMaxRTDLoss'}


def _gaussian(rng, n, d, noise):
  reg = rng.normal(size=(n, d))
  return reg, reg + noise * rng.normal(size=(n, d))


def _low_rank(rng, n, d, rank, noise):
  z, w = rng.normal(size=(n, rank)), rng.normal(size=(rank, d)) / np.sqrt(rank)
  return z @ w, (z + noise * rng.normal(size=(n, rank))) @ w


def _duplicates(rng, n, d, noise):
  """Repeated rows: the same sample twice in both batches, and rows repeated in one only."""
  reg, cur = _gaussian(rng, n, d, noise)
  reg[3], cur[3] = reg[0], cur[0]  # samples 0 and 3 identical in both
  reg[9] = reg[5]  # identical for the regulariser only
  cur[12] = cur[10]  # identical for the current model only
  return reg, cur


def _relu(rng, n, d, rank, noise):
  reg, cur = _low_rank(rng, n, d, rank, noise)
  return np.maximum(reg, 0.0), np.maximum(cur, 0.0)


# name -> (seed, builder(rng), card)
CASES = {
    'gauss_n8_d4': (0, lambda r: _gaussian(r, 8, 4, 0.5), 50),
    'gauss_n16_d16': (1, lambda r: _gaussian(r, 16, 16, 0.5), 50),
    'duplicates_n16_d8': (2, lambda r: _duplicates(r, 16, 8, 0.4), 50),
    'lowrank2_n32_d32': (3, lambda r: _low_rank(r, 32, 32, 2, 0.3), 50),
    'relu_rank4_n32_d64': (4, lambda r: _relu(r, 32, 64, 4, 0.3), 50),
    'gauss_n32_d8_card6': (5, lambda r: _gaussian(r, 32, 8, 0.7), 6),
}


def load_reference(reference_dir):
  """The reference's utils/fmap_loss.py with ripserplusplus.run answered by giotto-ph."""
  import bench_rtd  # pylint: disable=g-import-not-at-top
  import parity_reference  # pylint: disable=g-import-not-at-top
  module = bench_rtd.load_reference(reference_dir)  # also sets np.compat.long, engine 'giotto'
  module.rpp_py = types.SimpleNamespace(run=parity_reference._ripserpp_run)  # pylint: disable=protected-access
  return module


def reference_loss(module, reg, cur, mode, card, engine):
  """(loss, d loss / d cur) from the reference's FeatureMapLoss, as its training step calls it."""
  import torch  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):  # it prints its loss type and state
    fmap = module.FeatureMapLoss(
        None, 'cpu', which_model_is_regularizer='first', fmap_betas=[0, 0, 0, 0, 1],
        fmap_loss_type=MODES[mode], dist_p=SETTINGS['dist_p'], dim=SETTINGS['dim'],
        card=card, lp=SETTINGS['lp'], is_sym=SETTINGS['is_sym'], engine=engine, n_threads=1)
    fmap.activate()  # what the training loop does once member 1 is the regulariser
  reg_t = torch.from_numpy(reg)
  cur_t = torch.from_numpy(cur.copy()).requires_grad_(True)
  loss, _, _, _ = fmap([None] * 4 + [cur_t], [None] * 4 + [reg_t])
  assert loss.dtype == torch.float64 and loss.shape == (1,), (loss.dtype, loss.shape)
  loss.sum().backward()
  return float(loss.item()), cur_t.grad.numpy().copy()


def _commit(reference_dir, given):
  if given:
    return given
  try:
    return subprocess.run(['git', '-C', reference_dir, 'rev-parse', 'HEAD'], check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown (not a git checkout; pass --reference-commit)'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference-dir', required=True,
                      help='checkout of ens-hse-diploma (needs utils/fmap_loss.py)')
  parser.add_argument('--reference-commit', default='',
                      help='commit of that checkout, when it is not a git work tree')
  parser.add_argument('--out', default=os.path.join(ROOT, 'tests', 'data', 'rtd_reference.npz'))
  args = parser.parse_args()

  import gph  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_default_dtype(torch.float64)  # the reference's zero blocks follow the default
  module = load_reference(args.reference_dir)

  arrays = {'cases': np.array(list(CASES))}
  for name, (seed, build, card) in CASES.items():
    reg, cur = build(np.random.default_rng(seed))
    reg, cur = np.ascontiguousarray(reg, np.float64), np.ascontiguousarray(cur, np.float64)
    arrays.update({f'{name}__reg': reg, f'{name}__cur': cur, f'{name}__card': np.int64(card)})
    for mode in MODES:
      loss, grad = reference_loss(module, reg, cur, mode, card, engine='ripser')
      check, check_grad = reference_loss(module, reg, cur, mode, card, engine='giotto')
      if check != loss or not np.array_equal(check_grad, grad):
        raise RuntimeError(f'{name} {mode}: the reference\'s ripser and giotto branches differ '
                           f'({loss} vs {check})')
      arrays[f'{name}__loss_{mode}'] = np.float64(loss)
      arrays[f'{name}__grad_{mode}'] = grad
      print(f'{name:22s} {mode:8s} n={reg.shape[0]:3d} d={reg.shape[1]:3d} card={card:2d} '
            f'loss={loss:.12g} |grad|={np.linalg.norm(grad):.6g}')

  path = os.path.join(args.reference_dir, 'utils', 'fmap_loss.py')
  with open(path, 'rb') as f:
    source_sha = hashlib.sha256(f.read()).hexdigest()
  meta = dict(
      reference='tgritsaev/ens-hse-diploma utils/fmap_loss.py (FeatureMapLoss with '
                'RTDLoss / MinMaxRTDLoss), run unchanged',
      reference_commit=_commit(args.reference_dir, args.reference_commit),
      reference_fmap_loss_sha256=source_sha,
      settings=dict(SETTINGS, engine='ripser (stand-in below)', dtype='float64',
                    distances='torch.cdist(x, x, p=2) / sqrt(d), the reference FeatureMapLoss',
                    modes=MODES, gradient='d loss / d current features',
                    card='per case (NAME__card)'),
      ripserplusplus_stand_in=f'giotto-ph {gph.__version__} ripser_parallel(maxdim=1, '
                              'metric=precomputed, collapse_edges=False, n_threads=1, '
                              'return_generators=True); cross-checked against the '
                              "reference's engine='giotto' branch (identical)",
      cases={name: dict(seed=seed, card=card) for name, (seed, _, card) in CASES.items()},
      generator='bench/make_rtd_golden.py',
      versions=dict(torch=torch.__version__, numpy=np.__version__, python=platform.python_version()),
      date=datetime.date.today().isoformat(),
  )
  arrays['meta'] = np.array(json.dumps(meta, sort_keys=True))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f'wrote {args.out} ({os.path.getsize(args.out)} bytes)')


if __name__ == '__main__':
  main()
