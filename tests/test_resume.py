"""Kill-and-resume: a run killed (SIGKILL) or stopped (SIGTERM) mid-member and run again ends
with exactly the outputs of an uninterrupted run; a NaN loss stops with the last good state."""

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


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('whole'))
  run_experiment(engine_util.tiny_config(**OVERRIDES), workdir)
  return _outputs(workdir)


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
  ref_summary, ref_probs, ref_lines = uninterrupted
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
