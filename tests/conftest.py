"""Test setup: the repository root on sys.path (for `configs`), CPU JAX, no wandb network."""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('WANDB_MODE', 'disabled')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Identical jitted steps recur across tests (each run builds its own): share compilations.
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_compilation_cache_dir',
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '.jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order

# The tiny StarSSE run that several test files read (test_engine, test_bad_inputs): member 1
# for 2 epochs, members 2..4 in parallel for 1 epoch each, a per-batch cosine with warm
# restarts of period 4 steps (so members 2, 3, 4 start at different phases), evaluation
# after every epoch. Made once per test process.
STARSSE = dict(star_fge=True, num_fge=4, epochs=2, fge_epochs=1, scheduler='continious+cosine',
               valid_freq=1)


@pytest.fixture(scope='session')
def starsse_run(tmp_path_factory):
  """(work dir, summary, first-step records of every stage, config) of the shared run."""
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('starsse'))
  records = []
  config = engine_util.tiny_config(**STARSSE)
  with engine_util.spy_on_stages(records):
    summary = run_experiment(config, workdir)
  return workdir, summary, records, config


@pytest.fixture(autouse=True)
def _torch_grad_enabled():
  """Every test starts with torch's autograd on, whatever a test before it switched off."""
  import sys as _sys  # pylint: disable=g-import-not-at-top
  if 'torch' in _sys.modules:
    _sys.modules['torch'].set_grad_enabled(True)
  yield
