"""The exact RTD loss against golden values from the reference's own PyTorch code.

tests/data/rtd_reference.npz holds, for a few small feature pairs, the loss and its gradient
with respect to the current features computed by the reference's FeatureMapLoss
(utils/fmap_loss.py: torch.cdist / sqrt(d) distances, RTDLoss and MinMaxRTDLoss, dim 1,
lp 1, symmetric) in float64, with giotto-ph standing in for ripser++ (how it was made:
tests/data/README.md, bench/make_rtd_golden.py). Here `rtd_loss` on the same features, with the
same settings, must reproduce both to 1e-5 relative; neither torch nor the reference is needed.
"""

import json
import os

import jax
import numpy as np
import pytest

from enstransfer_jax.losses import rtd
from enstransfer_jax.losses import rtd_loss

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'rtd_reference.npz')
RTOL = 1e-5
MODES = ('minimum', 'minmax')
COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}

with np.load(PATH) as _npz:
  GOLDEN = {key: _npz[key] for key in _npz.files}
META = json.loads(str(GOLDEN['meta']))
CASES = [str(name) for name in GOLDEN['cases']]


@pytest.fixture(autouse=True)
def serial_filtrations():
  """Tiny filtrations: computing them in this process is cheaper than starting the pool."""
  rtd.set_workers(0)
  yield
  rtd.set_workers(None)


def test_golden_file_describes_its_settings():
  settings = META['settings']
  assert (settings['dim'], settings['lp'], settings['is_sym']) == (1, 1.0, True)
  assert settings['dtype'] == 'float64' and settings['dist_p'] == 2.0
  assert META['reference_commit'] and META['ripserplusplus_stand_in'].startswith('giotto-ph')
  assert sorted(META['cases']) == sorted(CASES)
  for name in CASES:
    reg, cur = GOLDEN[f'{name}__reg'], GOLDEN[f'{name}__cur']
    assert reg.dtype == cur.dtype == np.float64 and reg.shape[0] == cur.shape[0]
    for mode in MODES:
      assert GOLDEN[f'{name}__grad_{mode}'].shape == cur.shape
      assert np.isfinite(GOLDEN[f'{name}__grad_{mode}']).all()
      assert GOLDEN[f'{name}__loss_{mode}'] > 0


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('name', CASES)
def test_rtd_loss_reproduces_reference_value_and_gradient(name, mode):
  settings = META['settings']
  reg, cur = GOLDEN[f'{name}__reg'], GOLDEN[f'{name}__cur']
  card = int(GOLDEN[f'{name}__card'])
  with jax.enable_x64(True):
    # rtd_loss normalises by sqrt(d) itself, as the reference's FeatureMapLoss does.
    step = jax.jit(jax.value_and_grad(lambda c: rtd_loss(
        reg, c, dim=settings['dim'], card=card, lp=settings['lp'],
        is_sym=settings['is_sym'], mode=mode)))
    # Programs with a host callback are never in the persistent compilation cache; the LLVM
    # backend at -O0 halves their compile time and does not change float64 arithmetic.
    value, grad = step.lower(cur).compile(COMPILER_OPTIONS)(cur)
    value, grad = float(value), np.asarray(grad)
  assert grad.dtype == np.float64
  want, want_grad = float(GOLDEN[f'{name}__loss_{mode}']), GOLDEN[f'{name}__grad_{mode}']
  assert abs(value - want) <= RTOL * abs(want), (name, mode, value, want)
  # Relative to the gradient's scale: entries of points no gathered edge touches are zero.
  scale = np.max(np.abs(want_grad))
  np.testing.assert_allclose(grad, want_grad, rtol=RTOL, atol=RTOL * scale,
                             err_msg=f'{name} {mode}: d loss / d current features')
