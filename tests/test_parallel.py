"""Members in parallel, data parallelism over forced CPU devices, gradient accumulation."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enstransfer_jax import models, optim, rundir
from enstransfer_jax.training import run_experiment
from enstransfer_jax.training import step as step_lib
from tests import engine_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Noise images (engine_util.noise_images): digits' 4x4-block pixels tie in max-pool windows,
# where rounding differences re-route gradients from the first step on. 599 samples per batch
# (two steps per epoch on digits' 1198 training images): 4 and 2 devices do not divide it, so
# the batch is padded to split over the 'data' axis (batches.device_layout). Each member trains
# 2 steps, too few for float32 rounding to grow, so every step of every member agrees.
# 32 px: at 16 px layer4 sees 1x1 maps, where XLA's CPU SPMD partitioner gave wrong layer4
# outputs for a member-sharded mesh (seen with jax 0.10.2; 32 px and larger are exact).
STARSSE = dict(star_fge=True, num_fge=3, batch_size=599, lr=0.01, fge_lr=0.02, image_size=32)
TOL = 1e-5  # float32 rounding of sums split over devices: about 5e-7 seen


def _train_losses(workdir):
  return {(e['member'], e['step']): e['loss'] for e in rundir.RunDir(workdir).events('train')}


def _assert_every_step_agrees(ref, got):
  """Every logged loss of every member (2 steps each; members 2 and 3 train together in one
  stage of two members in the parallel runs) agrees to TOL."""
  assert ref.keys() == got.keys()
  assert sorted({m for m, _ in ref}) == [1, 2, 3]
  assert len(ref) == 6
  for key in sorted(ref):
    assert got[key] == pytest.approx(ref[key], abs=TOL), key


def _probs(workdir, members):
  return [np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy')) for i in members]


@pytest.fixture(scope='module')
def one_device_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('one_device'))
  with engine_util.noise_images():
    run_experiment(engine_util.tiny_config(**STARSSE), workdir)
  return workdir


def test_parallel_members_equal_sequential_members(one_device_run, tmp_path):
  workdir = str(tmp_path / 'sequential')
  with engine_util.noise_images():
    run_experiment(engine_util.tiny_config(parallel_members=False, **STARSSE), workdir)
  parallel, sequential = _train_losses(one_device_run), _train_losses(workdir)
  assert parallel.keys() == sequential.keys()
  # Member 1 trains alone in both runs: identical. Members 2 and 3 (one stage of two members
  # against two stages of one) agree to float32 rounding.
  for key in parallel:
    if key[0] == 1:
      assert parallel[key] == sequential[key], key
  _assert_every_step_agrees(sequential, parallel)
  np.testing.assert_array_equal(_probs(one_device_run, (1,))[0], _probs(workdir, (1,))[0])


def _run_on_forced_devices(workdir, **overrides):
  script = textwrap.dedent(f'''
      import os, sys, json
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      os.environ['JAX_PLATFORMS'] = 'cpu'
      sys.path.insert(0, {ROOT!r})
      import jax
      assert jax.device_count() == 4, jax.devices()
      from tests import engine_util
      from enstransfer_jax.training import run_experiment
      with engine_util.noise_images():
        run_experiment(engine_util.tiny_config(**{dict(STARSSE, **overrides)!r}), {workdir!r})
  ''')
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize('mesh_members', [1, 2], ids=['data4', 'members2xdata2'])
def test_four_devices_match_one_device(one_device_run, tmp_path, mesh_members):
  workdir = str(tmp_path / 'four')
  _run_on_forced_devices(workdir, mesh_members=mesh_members)
  one, four = _train_losses(one_device_run), _train_losses(workdir)
  assert one.keys() == four.keys()
  # Every step of every member, the members-sharded stage of members 2 and 3 included.
  _assert_every_step_agrees(one, four)
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(one_device_run))
  for p, q in zip(_probs(one_device_run, (1, 2, 3)), _probs(workdir, (1, 2, 3))):
    assert p.shape == q.shape and p.dtype == q.dtype
  one_summary = json.load(open(os.path.join(one_device_run, 'summary.json')))
  four_summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert [m['member'] for m in four_summary['members']] == [1, 2, 3]
  assert four_summary.keys() == one_summary.keys()


def test_gradient_accumulation_equals_one_big_batch():
  """With BN on running statistics (so the loss is a per-sample mean), 4 micro-batches of 8
  give the update of one batch of 32."""
  model = models.create_model('ResNet18', 10, width=4)
  variables = models.init_variables(model, jax.random.PRNGKey(0), image_size=16)
  all_bn = ('bn1', 'layer1', 'layer2', 'layer3', 'layer4')
  terms = step_lib.Terms(frozen_bn=all_bn)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (1, 32, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (1, 32)).astype(np.int32)
  results = []
  for accum in (1, 4):
    config = engine_util.tiny_config(grad_accum_steps=accum)
    tx = optim.create_optimizer(config)
    state = engine_util.stacked_state([variables], tx, terms, [0], [1])
    fn = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
    new_state, metrics = fn(state, engine_util.full_batch(images, labels), {})
    results.append((jax.device_get(new_state.params), jax.device_get(metrics['loss'])))
  (p1, loss1), (p4, loss4) = results
  np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  # And the update is not trivially zero.
  assert not np.allclose(jax.tree_util.tree_leaves(p1)[0],
                         jax.tree_util.tree_leaves(variables['params'])[0])


def test_gradient_accumulation_with_train_mode_batchnorm_equals_pytorch():
  """4 micro-batches of 8 with train-mode BatchNorm (each micro-batch normalised by its own
  statistics, the running ones updated after each) and one SGD step, against the same
  accumulation in PyTorch (float64): loss.backward() per micro-batch, weights 8/32."""
  import torch  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
  model = models.create_model('ResNet18', 10, width=4)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(3), 16))
  rng = np.random.default_rng(1)
  images = rng.integers(0, 255, (1, 32, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (1, 32)).astype(np.int32)
  config = engine_util.tiny_config(grad_accum_steps=4, scheduler='constant', num_fge=1,
                                   lr=0.1, wd=1e-3)
  tx = optim.create_optimizer(config)
  state = engine_util.stacked_state([variables], tx, step_lib.Terms(), [0], [1], config)
  fn = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, step_lib.Terms()), tx)
  new_state, metrics = fn(state, engine_util.full_batch(images, labels), {})
  got = checkpoints.flax_to_torch(jax.tree_util.tree_map(
      lambda x: np.asarray(x[0]), jax.device_get(new_state.variables())))

  net = engine_util.torch_twin(variables, 10, train=True)
  sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
  x = np.asarray(augment.eval_transform(images[0], transform='none', image_size=16))
  total = 0.0
  for i in range(4):
    logits, _ = net(torch.from_numpy(x[8 * i:8 * i + 8].transpose(0, 3, 1, 2).astype(np.float64)))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels[0, 8 * i:8 * i + 8]
                                                                      ).long()) * 8 / 32
    loss.backward()
    total += float(loss)
  sgd.step()
  assert float(metrics['loss'][0]) == pytest.approx(total, rel=1e-5)
  want = net.state_dict()
  for key, value in got.items():
    if key.endswith('num_batches_tracked'):
      continue
    np.testing.assert_allclose(value.numpy(), want[key].numpy(), rtol=1e-4, atol=2e-5,
                               err_msg=key)
  # Not the update of one batch of 32 (train-mode BN couples the samples of a batch).
  one = engine_util.tiny_config(scheduler='constant', num_fge=1, lr=0.1, wd=1e-3)
  fn1 = step_lib.make_train_step(step_lib.StepSpec.from_config(one, model, step_lib.Terms()), tx)
  state = engine_util.stacked_state([variables], tx, step_lib.Terms(), [0], [1], config)
  big, _ = fn1(state, engine_util.full_batch(images, labels), {})
  assert not np.allclose(np.asarray(big.params['layer1']['0']['conv1']['kernel']),
                         np.asarray(new_state.params['layer1']['0']['conv1']['kernel']),
                         atol=1e-6)
  torch.set_grad_enabled(True)


def test_data_parallel_steps_match_one_device_on_continuous_inputs():
  """Five train steps on a ('members', 'data') mesh of 4 CPU devices against 1 device."""
  script = textwrap.dedent(f'''
      import os, sys, json
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      sys.path.insert(0, {ROOT!r})
      import jax, jax.numpy as jnp, numpy as np
      from tests import engine_util
      from enstransfer_jax import models, optim
      from enstransfer_jax.training import mesh, step as step_lib
      model = models.create_model('ResNet18', 10, width=4)
      k = 2
      variables = [models.init_variables(model, jax.random.PRNGKey(i), 32) for i in range(k)]
      rng = np.random.default_rng(0)
      batches = [(rng.integers(0, 256, (k, 64, 32, 32, 3), dtype=np.uint8),
                  rng.integers(0, 10, (k, 64)).astype(np.int32)) for _ in range(5)]
      out = {{}}
      for mesh_members in (0, 1, 2):
        config = engine_util.tiny_config(mesh_members=max(mesh_members, 1), image_size=32,
                                         scheduler='constant', num_fge=1)
        tx = optim.create_optimizer(config)
        terms = step_lib.Terms()
        state = engine_util.stacked_state(variables, tx, terms, [0, 0], [2, 3], config)
        fn = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
        if mesh_members:
          placement = mesh.Placement(config, k)
          state = placement.members(state)
        losses = []
        for i, (images, labels) in enumerate(batches):
          batch = engine_util.full_batch(images, labels, i == 0)
          if mesh_members:
            batch = placement.batch(batch)
          state, metrics = fn(state, batch, {{}})
          losses.append(np.asarray(jax.device_get(metrics['loss'])).tolist())
        leaf = np.asarray(jax.device_get(jax.tree_util.tree_leaves(state.params)[0]))
        out[mesh_members] = {{'losses': losses, 'leaf': leaf.ravel()[:50].tolist(),
                             'devices': jax.device_count()}}
      print(json.dumps(out))
  ''')
  res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  single = out['0']
  for mesh_members in ('1', '2'):
    assert out[mesh_members]['devices'] == 4
    np.testing.assert_allclose(out[mesh_members]['losses'], single['losses'], atol=1e-4)
    np.testing.assert_allclose(out[mesh_members]['leaf'], single['leaf'], atol=1e-4)


def test_two_processes_with_two_devices_each(one_device_run, tmp_path):
  """The multi-node path on one machine: jax.distributed over 2 processes (gloo collectives on
  the CPU), each assembling only its own rows, process 0 writing the work dir."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / 'two_processes')
  script = textwrap.dedent(f'''
      import os, sys
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
      os.environ['JAX_PLATFORMS'] = 'cpu'
      sys.path.insert(0, {ROOT!r})
      import jax
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      from enstransfer_jax.training import mesh
      mesh.initialize_distributed()
      assert jax.process_count() == 2 and jax.device_count() == 4
      from tests import engine_util
      from enstransfer_jax.training import run_experiment
      with engine_util.noise_images():
        run_experiment(engine_util.tiny_config(**{STARSSE!r}), {workdir!r})
  ''')
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for p in procs:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
  one, two = _train_losses(one_device_run), _train_losses(workdir)
  assert one.keys() == two.keys()  # each event written once, by process 0
  _assert_every_step_agrees(one, two)
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(one_device_run))
