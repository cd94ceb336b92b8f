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
Data order is numpy's default_rng([seed, member, epoch]) (data/batches.py) and the earlier
member drawn for WO / prev-CE is default_rng([seed, member, step]): both host-side streams
of their own.
"""

import jax
import numpy as np
from enstransfer_jax.errors import UserError

_STREAMS = {'init': 1, 'head': 2, 'augment': 3, 'dropout': 4, 'crop': 5}


def key(seed, stream, *indices):
  if stream not in _STREAMS:
    raise UserError(f'unknown random stream {stream!r}; one of {", ".join(_STREAMS)}')
  k = jax.random.fold_in(jax.random.PRNGKey(int(seed)), _STREAMS[stream])
  for i in indices:
    k = jax.random.fold_in(k, int(i))
  return k


def numpy_rng(seed, stream, *indices):
  """A numpy Generator of the same stream (host-side draws)."""
  if stream not in _STREAMS:
    raise UserError(f'unknown random stream {stream!r}; one of {", ".join(_STREAMS)}')
  return np.random.default_rng([int(seed), _STREAMS[stream], *map(int, indices)])
