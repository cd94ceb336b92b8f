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
