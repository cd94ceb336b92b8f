"""Which members a run trains, where each starts, and which train at the same time.

A run is a list of stages; the members of one stage train together, stacked on a leading
axis under jax.vmap (a stage of one member is the sequential reference behaviour).

  SSE       member 1 from the pre-trained model for `epochs`, then member k (k = 2..num_fge)
            continues from member k-1 for `fge_epochs`. Always sequential.
  StarSSE   as SSE but member k >= 2 restarts from member 1 (params and BN statistics).
            Members 2..K are independent and form one parallel stage when
            `parallel_members` is on and nothing couples them (see `couples_members`).
  Local DE  `num_members` independent fine-tunings of the same checkpoint (own seed each).
  Global DE one fine-tuning per checkpoint in `ckpts`.

Each member also knows its `epoch_offset`: the global epoch (0-based) at which it starts in the
learning-rate schedule, which runs on across SSE/StarSSE members as in the reference.
"""

import dataclasses
from typing import List, Optional, Tuple
from enstransfer_jax.errors import UserError

ENSEMBLES = ('sse', 'local_de', 'global_de')


@dataclasses.dataclass(frozen=True)
class Member:
  index: int  # 1-based member number
  epochs: int  # epochs this member trains
  epoch_offset: int  # global schedule epoch at which it starts
  init: str  # 'pretrained' | 'previous' | 'first'
  ckpt: Optional[str] = None  # pre-trained checkpoint for init == 'pretrained'


def couples_members(config) -> Optional[str]:
  """Why members 2..K of a StarSSE run cannot train in parallel exactly, or None."""
  if config.wo_beta:
    return 'wo_beta uses earlier members'
  if config.prev_ce_beta:
    return 'prev_ce_beta uses earlier members'
  if not config.reset_optim_state:
    return 'reset_optim_state=False carries optimizer state from member to member'
  return None


def make_plan(config) -> List[Tuple[Member, ...]]:
  """The stages of the run, in order."""
  if config.ensemble == 'sse':
    k = max(1, int(config.num_fge))
    first = Member(1, config.epochs, 0, 'pretrained', config.ckpt or None)
    rest = [Member(i, config.fge_epochs, config.epochs + (i - 2) * config.fge_epochs,
                   'first' if config.star_fge else 'previous') for i in range(2, k + 1)]
    if config.star_fge and config.parallel_members and rest and couples_members(config) is None:
      return [(first,), tuple(rest)]
    return [(first,)] + [(m,) for m in rest]
  if config.ensemble == 'local_de':
    members = [Member(i, config.epochs, 0, 'pretrained', config.ckpt or None)
               for i in range(1, int(config.num_members) + 1)]
  elif config.ensemble == 'global_de':
    members = [Member(i, config.epochs, 0, 'pretrained', ck)
               for i, ck in enumerate(config.ckpts, start=1)]
  else:
    raise UserError(f'unknown ensemble {config.ensemble!r}; use one of {", ".join(ENSEMBLES)}')
  if config.parallel_members:
    return [tuple(members)]
  return [(m,) for m in members]


def is_cycle(member: Member) -> bool:
  """Cycles 2..K of SSE/StarSSE: where freezing and the member-1 regulariser apply."""
  return member.init in ('previous', 'first')
