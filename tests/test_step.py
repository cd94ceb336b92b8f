"""The train step on padded batches: the padding counts nowhere.

An epoch's last, partial batch is padded to batch_size with a mask. The step on it must equal
the same step computed without padding, written here from model.apply and jax.grad: the
loss, the accuracy, the new parameters (SGD's first step: p - lr (g + wd p)) and the new
BatchNorm running statistics (real samples only, unbiased variance), with and without
gradient accumulation, on one device and on 4 devices that split the batch. In float32 the
two sum different numbers of elements (zeros for the padding) in a different order: they
agree to about 2e-6 relative (the parameters after one step, lr 0.1, to about 1e-5 where
4 devices reduce the gradient in another order), so the tolerances are 1e-5 and 3e-5.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax import losses, models, optim
from enstransfer_jax.training import step as step_lib
from tests import engine_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL, SIZE = 6, 8  # real samples of the partial batch, batch_size


def _setup(accum):
  config = engine_util.tiny_config(batch_size=SIZE, grad_accum_steps=accum, scheduler='constant',
                                   num_fge=1, lr=0.1, wd=1e-3)
  model = models.create_model('ResNet18', 10, width=4)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0), 16))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (SIZE, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, SIZE).astype(np.int32)
  return config, model, variables, images, labels


def padded_step(accum, placement=None):
  """The engine's step on the padded batch: (loss, acc, params, batch_stats, sums) on the
  host; with a mesh.Placement, the state and the batch are placed as the engine does."""
  config, model, variables, images, labels = _setup(accum)
  terms = step_lib.Terms()
  tx = optim.create_optimizer(config)
  state = engine_util.stacked_state([variables], tx, terms, [0], [1], config)
  mask = (np.arange(SIZE) < REAL).astype(np.float32)
  images = images.copy()
  images[REAL:] = images[0]  # as batches.padded_indices pads
  labels = labels.copy()
  labels[REAL:] = labels[0]
  batch = {'images': images[None], 'labels': labels[None], 'mask': mask[None],
           'new_epoch': np.ones(1, bool)}
  step = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
  if placement is not None:
    state = placement.members(state)
    batch = placement.batch(batch)
    assert tuple(batch['images'].sharding.spec) == ('members', 'data')
  new, metrics = step(state, batch, {})
  new = jax.device_get(new)
  return (float(metrics['loss'][0]), float(metrics['acc'][0]),
          jax.tree_util.tree_map(lambda x: x[0], new.params),
          jax.tree_util.tree_map(lambda x: x[0], new.batch_stats),
          {k: float(v[0]) for k, v in new.sums.items()})


def reference_step(accum):
  """The same step on the REAL samples only, without padding or masks."""
  config, model, variables, images, labels = _setup(accum)
  from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
  x = augment.train_transform(jax.random.PRNGKey(0), images[:REAL], transform='none',
                              image_size=16)
  y = labels[:REAL]
  micro = [(0, 4), (4, REAL)] if accum == 2 else [(0, REAL)]

  def loss_fn(params, stats, lo, hi):
    (logits, _), new = model.apply({'params': params, 'batch_stats': stats}, x[lo:hi],
                                   train=True, mutable=['batch_stats'])
    ce = losses.per_sample_cross_entropy(logits, y[lo:hi])
    return jnp.sum(ce) / REAL, (new['batch_stats'], jnp.sum(jnp.argmax(logits, -1) == y[lo:hi]))

  stats, grads, loss, correct = variables['batch_stats'], None, 0.0, 0
  for lo, hi in micro:
    (value, (stats, right)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'], stats, lo, hi)
    grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
    loss, correct = loss + float(value), correct + int(right)
  params = jax.tree_util.tree_map(lambda p, g: p - config.lr * (g + config.wd * p),
                                  variables['params'], grads)
  return loss, correct / REAL, jax.device_get(params), jax.device_get(stats)


def _compare(got, want):
  loss, acc, params, stats = got[:4]
  np.testing.assert_allclose(loss, want[0], rtol=1e-5)
  assert acc == want[1]
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-5)
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(want[3])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padded_batch_equals_the_unpadded_computation():
  got = padded_step(1)
  _compare(got, reference_step(1))
  sums = got[4]
  assert sums['count'] == REAL
  np.testing.assert_allclose(sums['loss'], got[0] * REAL, rtol=1e-6)
  np.testing.assert_allclose(sums['acc'], got[1] * REAL, rtol=1e-6)


def test_padded_batch_with_gradient_accumulation():
  """Micro-batches of 4 real and of 2 real + 2 padded samples, each with its own BN."""
  _compare(padded_step(2), reference_step(2))


def test_padded_batch_split_over_four_devices(tmp_path):
  script = f'''
import sys
sys.path.insert(0, {ROOT!r})
import jax
from tests import test_step
from enstransfer_jax.training import mesh
assert jax.device_count() == 4
for accum in (1, 2):
  placement = mesh.Placement(test_step._setup(accum)[0], 1)
  got = test_step.padded_step(accum, placement)
  test_step._compare(got, test_step.reference_step(accum))
print('OK')
'''
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'OK' in out.stdout
