"""plan.make_plan for every ensemble kind: members, start points, schedule offsets, stages."""

import pytest

from enstransfer_jax.training import plan
from tests import engine_util


def _stages(**overrides):
  return [[(m.index, m.epochs, m.epoch_offset, m.init, m.ckpt) for m in stage]
          for stage in plan.make_plan(engine_util.tiny_config(**overrides))]


def test_sse_members_continue_one_after_another():
  # Member 1 for `epochs` from the checkpoint, member k from member k-1 for fge_epochs, the
  # schedule running on: member k starts at epoch epochs + (k-2) fge_epochs.
  assert _stages(ckpt='pre', epochs=3, fge_epochs=2, num_fge=4) == [
      [(1, 3, 0, 'pretrained', 'pre')], [(2, 2, 3, 'previous', None)],
      [(3, 2, 5, 'previous', None)], [(4, 2, 7, 'previous', None)]]
  # parallel_members changes nothing for SSE: each member needs the one before.
  assert _stages(ckpt='pre', epochs=3, fge_epochs=2, num_fge=3, parallel_members=True) == [
      [(1, 3, 0, 'pretrained', 'pre')], [(2, 2, 3, 'previous', None)],
      [(3, 2, 5, 'previous', None)]]
  assert _stages(num_fge=1, epochs=2) == [[(1, 2, 0, 'pretrained', None)]]


def test_starsse_members_2_to_k_restart_from_member_1_in_one_stage():
  rest = [(2, 1, 2, 'first', None), (3, 1, 3, 'first', None), (4, 1, 4, 'first', None)]
  first = [(1, 2, 0, 'pretrained', None)]
  assert _stages(star_fge=True, epochs=2, fge_epochs=1, num_fge=4) == [first, rest]
  assert _stages(star_fge=True, epochs=2, fge_epochs=1, num_fge=4,
                 parallel_members=False) == [first] + [[m] for m in rest]


@pytest.mark.parametrize('coupling, why', [
    ({'wo_beta': 1.0}, 'wo_beta'), ({'prev_ce_beta': -0.1}, 'prev_ce_beta'),
    ({'reset_optim_state': False}, 'reset_optim_state')])
def test_coupled_starsse_members_stay_sequential(coupling, why):
  config = engine_util.tiny_config(star_fge=True, num_fge=3, **coupling)
  assert why in plan.couples_members(config)
  assert [[m.index for m in s] for s in plan.make_plan(config)] == [[1], [2], [3]]
  assert plan.couples_members(engine_util.tiny_config(star_fge=True, num_fge=3)) is None


def test_local_de_members_fine_tune_the_same_checkpoint():
  members = [(i, 3, 0, 'pretrained', 'pre') for i in (1, 2, 3)]
  assert _stages(ensemble='local_de', num_members=3, ckpt='pre', epochs=3) == [members]
  assert _stages(ensemble='local_de', num_members=3, ckpt='pre', epochs=3,
                 parallel_members=False) == [[m] for m in members]
  # From scratch: no checkpoint (each member draws its own init).
  assert _stages(ensemble='local_de', num_members=2) == [
      [(1, 1, 0, 'pretrained', None), (2, 1, 0, 'pretrained', None)]]


def test_global_de_one_member_per_checkpoint():
  members = [(1, 1, 0, 'pretrained', 'a'), (2, 1, 0, 'pretrained', 'b'),
             (3, 1, 0, 'pretrained', 'c')]
  assert _stages(ensemble='global_de', ckpts=('a', 'b', 'c'), num_fge=5) == [members]
  assert _stages(ensemble='global_de', ckpts=('a', 'b', 'c'),
                 parallel_members=False) == [[m] for m in members]


def test_cycles_are_the_sse_members_after_the_first():
  kinds = {}
  for overrides in ({}, {'star_fge': True}, {'ensemble': 'local_de', 'num_members': 2},
                    {'ensemble': 'global_de', 'ckpts': ('a', 'b')}):
    for stage in plan.make_plan(engine_util.tiny_config(**overrides)):
      for m in stage:
        kinds[(str(overrides), m.index)] = plan.is_cycle(m)
  assert [k for k, v in kinds.items() if v] == [
      ('{}', 2), ('{}', 3), ("{'star_fge': True}", 2), ("{'star_fge': True}", 3)]


def test_unknown_ensemble():
  with pytest.raises(ValueError, match="unknown ensemble 'bagging'"):
    plan.make_plan(engine_util.tiny_config(ensemble='bagging'))
