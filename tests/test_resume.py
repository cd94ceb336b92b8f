"""Kill-and-resume: a run killed (SIGKILL) or stopped (SIGTERM) mid-member and run again ends
with exactly the outputs of an uninterrupted run; a NaN loss stops with the last good state."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from enstransfer_jax.training import run_experiment
from tests import engine_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Member 1: 2 epochs x 2 steps; members 2 and 3 in parallel: 2 epochs x 2 steps.
OVERRIDES = dict(star_fge=True, epochs=2, fge_epochs=2, num_fge=3, checkpoint_every_steps=1)


def _outputs(workdir):
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  summary.pop('workdir')
  probs = [np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy')) for i in (1, 2, 3)]
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  for line in lines:
    line.pop('time')
    line.pop('rtd_host_seconds', None)
  return summary, probs, lines


class _Killed(BaseException):
  """Stands for SIGKILL in the fault-injection test: nothing of the run's code catches it."""


@contextlib.contextmanager
def _faults(kill_at=None, rng=None):
  """Counts the run's events (each train step, each metrics.jsonl record, each file renamed
  into place, each progress save started) and stops the run at event number `kill_at`, a
  metrics.jsonl record there being cut half-way through its line when rng says so."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import atomic  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import workdir as wd  # pylint: disable=g-import-not-at-top
  count = []

  def event(kind, partial=None):
    count.append(kind)
    if len(count) == kill_at:
      if partial is not None and rng.random() < 0.5:
        with open(partial[0], 'a') as f:
          f.write(partial[1][:len(partial[1]) // 2])
      raise _Killed(kind)

  real = (step_lib.make_train_step, wd.MetricsLog.write, atomic.install,
          ocp.CheckpointManager.save)

  def make(*a):
    step = real[0](*a)

    def wrapped(*args):
      event('step')
      return step(*args)
    return wrapped

  def write(self, name, **fields):
    event(f'record {name}', (self.path, json.dumps({'event': name, **{k: str(v) for k, v in fields.items()}})))
    return real[1](self, name, **fields)

  def install(tmp, out):
    event(f'install {os.path.basename(out)}')
    return real[2](tmp, out)

  def save(self, *a, **k):
    event('progress save')
    return real[3](self, *a, **k)

  step_lib.make_train_step, wd.MetricsLog.write, atomic.install = make, write, install
  ocp.CheckpointManager.save = save
  try:
    yield count
  finally:
    step_lib.make_train_step, wd.MetricsLog.write, atomic.install = real[:3]
    ocp.CheckpointManager.save = real[3]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('whole'))
  with _faults() as count:
    run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  return _outputs(workdir) + (len(count), workdir)


def _run_and_signal(workdir, signal_name, at_call, second=False):
  """Runs the tiny experiment in a subprocess that signals itself at the at_call-th step;
  with `second`, a second SIGINT arrives while the progress save it causes is being written
  (right after orbax has started the save)."""
  script = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {ROOT!r})
      import orbax.checkpoint as ocp
      from tests import engine_util
      from enstransfer_jax.training import run_experiment
      from enstransfer_jax.training import step as step_lib
      real, calls, sent = step_lib.make_train_step, [0], []
      def make(*a):
        step = real(*a)
        def wrapped(*args):
          calls[0] += 1
          if calls[0] == {at_call}:
            sent.append(1)
            os.kill(os.getpid(), signal.{signal_name})
          return step(*args)
        return wrapped
      step_lib.make_train_step = make
      real_save = ocp.CheckpointManager.save
      def save(self, *a, **k):
        out = real_save(self, *a, **k)
        if {second!r} and len(sent) == 1:
          sent.append(2)
          os.kill(os.getpid(), signal.SIGINT)
        return out
      ocp.CheckpointManager.save = save
      run_experiment(engine_util.tiny_config(**{OVERRIDES!r}), {workdir!r})
  ''')
  return subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.parametrize('signal_name, at_call, second', [
    ('SIGKILL', 6, False), ('SIGTERM', 3, False), ('SIGINT', 3, True)],
    ids=['SIGKILL', 'SIGTERM', 'SIGINT_then_SIGINT_during_the_save'])
def test_interrupted_run_resumes_to_identical_outputs(tmp_path, uninterrupted, signal_name,
                                                      at_call, second):
  workdir = str(tmp_path / 'run')
  out = _run_and_signal(workdir, signal_name, at_call, second)
  assert out.returncode != 0, 'the run was not interrupted'
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  position = engine_util.progress_position(workdir)
  if second:
    # The second signal stops at once (KeyboardInterrupt), during the save of step 3's end.
    assert 'SIGINT: saving progress' in out.stdout, out.stdout[-2000:]
    assert 'KeyboardInterrupt' in out.stderr and 'Interrupted' not in out.stderr
    assert position['stage'] == 0
  elif signal_name == 'SIGTERM':
    assert 'Interrupted' in out.stderr and position['stage'] == 0
  else:
    assert position['stage'] == 1  # killed inside the parallel stage of members 2 and 3
  run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  summary, probs, lines = _outputs(workdir)
  ref_summary, ref_probs, ref_lines = uninterrupted[:3]
  assert summary == ref_summary
  for p, q in zip(probs, ref_probs):
    np.testing.assert_array_equal(p, q)
  assert lines == ref_lines
  assert not os.path.exists(os.path.join(workdir, 'progress'))


def test_nan_loss_stops_with_member_epoch_step_and_keeps_earlier_output(tmp_path):
  workdir = str(tmp_path / 'run')
  config = engine_util.tiny_config(**dict(OVERRIDES, fge_lr=1e30))
  with pytest.raises(FloatingPointError) as info:
    run_experiment(config, workdir)
  message = str(info.value)
  assert '\n' not in message and 'member 2,3' in message and 'epoch 1' in message
  assert 'step' in message
  # Member 1 is complete and the last good progress checkpoint is still there.
  assert os.path.exists(os.path.join(workdir, 'members', '1', 'test_probs.npy'))
  position = engine_util.progress_position(workdir)
  assert position['stage'] == 1 and not os.path.exists(os.path.join(workdir, 'members', '2'))


@pytest.mark.parametrize('seed', [42, 39, 136])
def test_run_stopped_at_random_points_resumes_to_the_same_files(tmp_path, uninterrupted, seed):
  """Fault injection: the run stops at a random event (a step, a metrics record, possibly cut
  half-way, a file being renamed into place, a progress save), and so does each of its next
  two reruns; the last rerun must leave the summary.json, member probabilities and
  metrics.jsonl (every record, in order, but the wall-clock fields) of the uninterrupted run.
  The seeds are ones whose first stop falls on the run's most fragile events (the first
  record before the first progress save; the last record and summary.json); the stops after
  it are random."""
  rng = np.random.default_rng(seed)
  *reference, events, _ = uninterrupted
  workdir = str(tmp_path / 'run')
  stops = []
  for _ in range(3):
    stops.append(int(rng.integers(1, events + 1)))
    try:
      with _faults(stops[-1], rng):
        run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
      break  # the rerun had fewer events left than the stop drawn: it finished
    except _Killed:
      pass
  run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  summary, probs, lines = _outputs(workdir)
  assert summary == reference[0], stops
  for p, q in zip(probs, reference[1]):
    np.testing.assert_array_equal(p, q)
  assert lines == reference[2], stops
  assert not os.path.exists(os.path.join(workdir, 'progress'))


def test_full_disk_during_a_progress_save_keeps_the_last_save_and_resumes(tmp_path,
                                                                          uninterrupted):
  """The error orbax's tensorstore raises when the device is full, injected into the third
  progress save: one line naming the folder, the second save intact, and the rerun (space
  freed) ends with the uninterrupted run's files."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  real, calls = ocp.CheckpointManager.save, []

  def save(self, *a, **k):
    calls.append(1)
    if len(calls) == 3:
      raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "progress/state/2.orbax-checkpoint-'
                       'tmp/d/0": Failed to write 2030 bytes to file 6: No space left on device '
                       "[os_error_code='28']")
    return real(self, *a, **k)

  ocp.CheckpointManager.save = save
  try:
    with pytest.raises(OSError) as info:
      run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  finally:
    ocp.CheckpointManager.save = real
  assert info.value.strerror == (
      f"no space left on the device while writing {os.path.join(os.path.abspath(workdir), 'progress')}; "
      'free some space and run the same command again (the run resumes from its last checkpoint)')
  # The second save (member 1, after epoch 1 and 1 batch) is the one a rerun reads.
  position = engine_util.progress_position(workdir)
  assert (position['stage'], position['epoch'], position['batch']) == (0, 1, 1)
  run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  summary, probs, lines = _outputs(workdir)
  assert summary == uninterrupted[0]
  for p, q in zip(probs, uninterrupted[1]):
    np.testing.assert_array_equal(p, q)
  assert lines == uninterrupted[2]


def test_lower_fge_lr_goes_to_a_new_workdir_where_member_1_is_the_same(tmp_path, uninterrupted):
  """A NaN in member 2 is mended with a lower fge_lr: refused in the old work dir (its members
  were trained with the old one), and in a new work dir member 1 comes out bit-identical."""
  workdir = uninterrupted[-1]
  config = engine_util.tiny_config(**dict(OVERRIDES, fge_lr=0.03))
  with pytest.raises(ValueError) as info:
    run_experiment(config, workdir)
  assert str(info.value).endswith(
      'choose another --workdir or pass --config.overwrite=True (in another --workdir member 1 '
      'is retrained bit-identically and the finished members here are kept)')
  new = str(tmp_path / 'lower_fge_lr')
  run_experiment(config, new)
  np.testing.assert_array_equal(np.load(os.path.join(new, 'members', '1', 'test_probs.npy')),
                                uninterrupted[1][0])
  assert not np.array_equal(np.load(os.path.join(new, 'members', '2', 'test_probs.npy')),
                            uninterrupted[1][1])
