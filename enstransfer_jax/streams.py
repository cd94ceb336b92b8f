"""Independent random streams derived from the run's seed, one per purpose.

  key(seed, 'init', member)     from-scratch parameters of a member (Local / Global DE
                                members from scratch each get their own); numpy's
                                numpy_rng(seed, 'init', member) for the ResNets' host init
  key(seed, 'head', member)     the new `num_classes` head of a member started from a
                                pre-trained checkpoint with another head
  key(seed, 'augment')          the augmentation; the step folds in (member, step)
  key(seed, 'dropout')          a Swin's drop path; the step folds in (member, step) and
                                splits one key per micro-batch
  numpy_rng(seed, 'crop', member, epoch)  the train crop boxes of the host pipeline
                                (data/host_pipeline.py)
  numpy_rng(seed, 'order', member, epoch) the data order (data/batches.py)
  numpy_rng(seed, 'earlier', member, step) the earlier member drawn for WO / prev-CE

numpy_rng seeds default_rng with [seed, stream id, *indices], each stream with a fixed number
of indices, so two draws share a generator only when they are the same stream and the same
indices. (The data order was once default_rng([seed, member, epoch]): member 1's order of
epoch m came from the very generator of member m's initial weights, [seed, 1, m], so a
from-scratch member's first weights and its first epoch's order were one draw.)
`tests/test_streams.py` checks that no two streams start from the same state.
"""

import jax
import numpy as np
from enstransfer_jax.errors import UserError

_STREAMS = {'init': 1, 'head': 2, 'augment': 3, 'dropout': 4, 'crop': 5, 'order': 6, 'earlier': 7}
_NUMPY_INDICES = {'init': 1, 'crop': 2, 'order': 2, 'earlier': 2}  # indices each host stream takes


def key(seed, stream, *indices):
  if stream not in _STREAMS:
    raise UserError(f'unknown random stream {stream!r}; one of {", ".join(_STREAMS)}')
  k = jax.random.fold_in(jax.random.PRNGKey(int(seed)), _STREAMS[stream])
  for i in indices:
    k = jax.random.fold_in(k, int(i))
  return k


def numpy_rng(seed, stream, *indices):
  """A numpy Generator of a host-side stream: default_rng([seed, stream id, *indices])."""
  if stream not in _NUMPY_INDICES:
    raise UserError(f'unknown host random stream {stream!r}; one of {", ".join(_NUMPY_INDICES)}')
  if len(indices) != _NUMPY_INDICES[stream]:
    raise ValueError(f'stream {stream!r} takes {_NUMPY_INDICES[stream]} indices, got {indices}')
  return np.random.default_rng([int(seed), _STREAMS[stream], *map(int, indices)])
