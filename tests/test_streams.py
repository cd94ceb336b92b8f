"""The run's host random streams are independent: no two of them start from the same generator.

numpy's default_rng([seed, a, b]) is the generator of default_rng([seed, a, b, 0]) too, and a
stream keyed [seed, member, epoch] meets one keyed [seed, stream id, member] whenever the
member number equals the id: the data order of member 1's epoch m was once the generator of
member m's initial weights."""

import itertools

import numpy as np

from enstransfer_jax import streams
from enstransfer_jax.data import batches


def _state(rng):
  return rng.bit_generator.state['state']['state']


def test_no_two_host_streams_share_a_generator():
  seen = {}
  for seed in (0, 1, 5):
    for stream, arity in streams._NUMPY_INDICES.items():
      for idx in itertools.product(range(12), repeat=arity):
        state = _state(streams.numpy_rng(seed, stream, *idx))
        assert state not in seen, f'{(seed, stream, idx)} starts as {seen[state]}'
        seen[state] = (seed, stream, idx)


def test_data_order_is_not_drawn_from_another_stream():
  n = 1000
  for seed, member, epoch in itertools.product((0, 2), (1, 2, 3), (1, 2, 3, 7)):
    order = batches.epoch_order(seed, member, epoch, n)
    assert np.array_equal(np.sort(order), np.arange(n))
    for stream, arity in streams._NUMPY_INDICES.items():
      for idx in itertools.product(range(8), repeat=arity):
        if (stream, idx) != ('order', (member, epoch)):
          assert not np.array_equal(order, streams.numpy_rng(seed, stream, *idx).permutation(n)), \
              (seed, member, epoch, stream, idx)
    assert np.array_equal(order, streams.numpy_rng(seed, 'order', member, epoch).permutation(n))
