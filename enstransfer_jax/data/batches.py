"""Order of training examples: one permutation per (seed, member, epoch), batches of it.

The order depends only on the three integers, never on what ran before, so members trained in
parallel (vmap) or one after another, and a run resumed after an interruption, see the same
batches. As the reference's DataLoader(shuffle=True, drop_last=False), the last batch of an
epoch may be smaller than batch_size.
"""

import numpy as np


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def epoch_order(seed, member, epoch, num_examples):
  """int64 permutation of range(num_examples), a pure function of (seed, member, epoch)."""
  for name, value in (('seed', seed), ('member', member), ('epoch', epoch)):
    _check_int(name, value, 0)
  _check_int('num_examples', num_examples, 1)
  rng = np.random.default_rng([int(seed), int(member), int(epoch)])
  return rng.permutation(int(num_examples))


def batch_slices(num_examples, batch_size):
  """[(start, stop), ...] covering range(num_examples); the last batch may be partial."""
  _check_int('num_examples', num_examples, 1)
  _check_int('batch_size', batch_size, 1)
  return [(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]


def num_batches(num_examples, batch_size):
  """Batches per epoch with the last partial batch kept: ceil(num_examples / batch_size)."""
  return len(batch_slices(num_examples, batch_size))


def iterate_batches(images, labels, order, batch_size):
  """Yields (images[idx], labels[idx]) numpy pairs, idx the consecutive slices of `order`."""
  if len(images) != len(labels) or len(order) != len(labels):
    raise ValueError(f'images ({len(images)}), labels ({len(labels)}) and order ({len(order)}) '
                     'must have the same length')
  order = np.asarray(order)
  for start, stop in batch_slices(len(order), batch_size):
    idx = order[start:stop]
    yield images[idx], labels[idx]
