"""Devices: a ('members', 'data') mesh over every device of every process.

The members of a stage (leading axis K of the state) are split over the 'members' axis
(config.mesh_members devices; default 1, i.e. every device holds every member) and each
batch over the 'data' axis. Batch statistics are means over the whole, global batch, so the
maths equals one device holding the whole batch: XLA inserts the all-reduces. Training
batches always divide over 'data': the engine pads each micro-batch to a multiple of the axis
with masked rows (batches.device_layout). A batch left whole on every device (what `batch`
does with one that does not divide) computed gradients measurably different from one device's
on the CPU (up to 4e-3 with jax 0.10.2), besides doing the work once per device.

Multi-node: `initialize_distributed()` calls jax.distributed.initialize() when the
environment describes several processes (SLURM with more than one task, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set by hand). Every process then
runs the same program; arrays are assembled from each process's own rows with
jax.make_array_from_callback, and only process 0 writes files.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed():
  """Joins the JAX distributed runtime when several processes are configured; idempotent."""
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in os.environ
  manual = 'JAX_COORDINATOR_ADDRESS' in os.environ
  if (slurm or manual) and not jax.distributed.is_initialized():
    if manual:
      jax.distributed.initialize(
          coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
          num_processes=int(os.environ['JAX_NUM_PROCESSES']),
          process_id=int(os.environ['JAX_PROCESS_ID']))
    else:
      jax.distributed.initialize()  # reads SLURM's variables
  return jax.process_count()


def barrier(name):
  """Every process waits here for the others (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def is_writer():
  """Only process 0 writes logs, members and summaries."""
  return jax.process_index() == 0


class Placement:
  """Shardings of one stage: state over 'members', batches over ('members', 'data')."""

  def __init__(self, config, num_members):
    devices = np.asarray(jax.devices())
    m = int(config.mesh_members) or 1
    if len(devices) % m or num_members % m:
      m = 1  # members that do not split evenly stay whole on every device
    self.mesh = Mesh(devices.reshape(m, len(devices) // m), ('members', 'data'))
    self.data_size = len(devices) // m

  def _sharding(self, spec):
    return NamedSharding(self.mesh, spec)

  def put(self, tree, spec):
    """Places host (numpy) or device arrays; each process supplies only its own shards."""
    sharding = self._sharding(spec)

    def place(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
        return jax.device_put(x, sharding)
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.tree_util.tree_map(place, tree)

  def members(self, tree):
    """Stacked member state: split over the 'members' axis."""
    return self.put(tree, P('members'))

  def replicated(self, tree):
    return self.put(tree, P())

  def batch(self, tree):
    """[K, B, ...] arrays: members over 'members', samples over 'data' when B divides;
    [K] arrays over 'members'."""
    def spec(x):
      if np.ndim(x) == 1:
        return P('members')
      divisible = np.shape(x)[1] % self.data_size == 0
      return P('members', 'data' if divisible else None)
    return jax.tree_util.tree_map(lambda x: self.put(x, spec(x)), tree)

  def eval_batch(self, images):
    """[B, ...] test images over 'data' when B divides."""
    divisible = images.shape[0] % self.data_size == 0
    return self.put(images, P('data' if divisible else None))


def to_host(tree):
  """Numpy copies of (possibly multi-process) arrays, identical on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)
