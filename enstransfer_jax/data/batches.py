"""Order of training examples: one permutation per (seed, member, epoch), batches of it.

The order depends only on the three integers, never on what ran before, so members trained in
parallel (vmap) or one after another, and a run resumed after an interruption, see the same
batches. As the reference's DataLoader(shuffle=True, drop_last=False), the last batch of an
epoch may be smaller than batch_size; the engine pads it to batch_size with a mask
(`padded_indices`), so every step has the same shape. With drop_last=True (the reference's
Swin configs: DataLoader(..., drop_last=True)) an epoch is the floor(n / batch_size) full
batches of its order and the last n mod batch_size examples of the order are not seen in that
epoch; steps per epoch, and so the schedules, count those batches only (len(loader)).

On a mesh whose 'data' axis does not divide the batch (599 samples over 4 devices), each
micro-batch is padded further to a multiple of the axis (`device_layout`), so the batch is
split over the devices like any other instead of being computed whole on every device.
"""

import numpy as np
from enstransfer_jax import streams
from enstransfer_jax.errors import UserError


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f'{name} must be an integer >= {minimum}, got {value!r}')


def epoch_order(seed, member, epoch, num_examples):
  """int64 permutation of range(num_examples), a pure function of (seed, member, epoch)
  (streams.numpy_rng(seed, 'order', member, epoch))."""
  for name, value in (('seed', seed), ('member', member), ('epoch', epoch)):
    _check_int(name, value, 0)
  _check_int('num_examples', num_examples, 1)
  return streams.numpy_rng(seed, 'order', member, epoch).permutation(int(num_examples))


def batch_slices(num_examples, batch_size, drop_last=False):
  """[(start, stop), ...] covering range(num_examples); the last batch may be partial, or,
  with drop_last, is left out when partial (only full batches)."""
  _check_int('num_examples', num_examples, 1)
  _check_int('batch_size', batch_size, 1)
  if not drop_last:
    return [(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]
  if batch_size > num_examples:
    raise UserError(f'drop_last=True with batch_size={batch_size} > {num_examples} training '
                    'examples leaves no full batch; lower batch_size or set drop_last=False')
  return [(s, s + batch_size) for s in range(0, num_examples - batch_size + 1, batch_size)]


def num_batches(num_examples, batch_size, drop_last=False):
  """Batches per epoch: ceil(num_examples / batch_size) with the last partial batch kept,
  floor(num_examples / batch_size) with drop_last."""
  return len(batch_slices(num_examples, batch_size, drop_last))


def steps_per_epoch(config, num_examples):
  """Train steps per epoch of a config (its batch_size and drop_last) on num_examples."""
  return num_batches(num_examples, config.batch_size, config.get('drop_last', False))


def padded_indices(orders, lo, hi, batch_size):
  """Rows lo:hi of each member's order, padded to batch_size with the slice's first index.

  Returns (idx int64 [K, batch_size], mask float32 [K, batch_size]): mask is 1 for the
  hi - lo real samples and 0 for the padding.
  """
  idx = np.stack([np.asarray(o[lo:hi]) for o in orders])
  pad = batch_size - (hi - lo)
  mask = np.zeros((len(orders), batch_size), np.float32)
  mask[:, :hi - lo] = 1.0
  if pad:
    idx = np.concatenate([idx, np.repeat(idx[:, :1], pad, axis=1)], axis=1)
  return idx, mask


def device_layout(batch_size, micro_batches=1, multiple=1):
  """Where the rows of a [K, batch_size] batch go in a batch whose micro-batches are padded to
  a multiple of `multiple` (the mesh's 'data' axis) rows each.

  Returns (pos int64 [B'], real float32 [B']): row j of the new batch is row pos[j] of the
  old one, padding where real[j] == 0 (it repeats its micro-batch's first row). Each
  micro-batch keeps its samples, so gradient accumulation and train-mode BatchNorm see the
  same micro-batches. The identity when `multiple` divides batch_size / micro_batches.
  """
  _check_int('batch_size', batch_size, 1)
  _check_int('micro_batches', micro_batches, 1)
  _check_int('multiple', multiple, 1)
  if batch_size % micro_batches:
    raise UserError(f'micro_batches={micro_batches} must divide batch_size={batch_size}')
  size = batch_size // micro_batches
  padded = -(-size // multiple) * multiple
  pos = np.concatenate([i * size + np.concatenate([np.arange(size),
                                                   np.zeros(padded - size, np.int64)])
                        for i in range(micro_batches)]).astype(np.int64)
  real = np.tile((np.arange(padded) < size).astype(np.float32), micro_batches)
  return pos, real
