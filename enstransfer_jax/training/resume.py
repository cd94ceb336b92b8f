"""Progress checkpoints of the stage in training, so a run resumes where it stopped.

<workdir>/progress/state/ is an orbax CheckpointManager (the last two saves); each save holds
the stacked TrainState ('state', with this epoch's metric sums) and its position
('position', JSON), written together, so every process reads the same position from orbax:
  {'stage': s, 'epoch': e, 'batch': b, 'lines': L}
meaning: stage s (0-based) has finished e epochs plus b batches of epoch e+1; metrics.jsonl
had L lines. Everything else a step needs is a pure function of (seed, member, epoch, step):
data order, augmentation, the learning rate, the member drawn for WO / prev-CE. So a resumed
run repeats exactly what the uninterrupted run would have done.

Each save's position also holds a checksum of the state's arrays (`checksum`: CRC-32 of every
array's dtype, shape and bytes, order-free); `position` restores the newest save, verifies it,
and falls back to the one before when it is unreadable or does not match (a flipped bit, a
truncated or deleted file), saying so in one line.

Saves are asynchronous: `save` returns once the state is copied off the devices and the
files are written in the background while the next steps run; the next save, `finish` and
`clear` wait for it. orbax writes each save under a temporary name and marks it complete
last, so a save cut short by SIGKILL is ignored on resume (the previous one is used).
When to save: every `checkpoint_every_minutes` minutes (checked at every step), else at the
end of every epoch; also every `checkpoint_every_steps` steps when set, at every stage's end,
and on a signal. SIGINT and SIGTERM set a flag; the loop saves at the next step boundary,
waits for the save to complete and stops with `Interrupted`.
"""

import contextlib
import logging
import os
import signal
import shutil
import sys
import time
import zlib

import numpy as np

import jax
import orbax.checkpoint as ocp

from enstransfer_jax import rundir
from enstransfer_jax.training import mesh
from enstransfer_jax.training import workdir as wd
from enstransfer_jax.errors import Interrupted, UserError  # pylint: disable=unused-import


class Progress:

  def __init__(self, workdir, every_minutes=0.0, asynchronous=True):
    self.dir = os.path.abspath(rundir.RunDir(workdir).file('progress'))
    self._manager = None
    self.stop_requested = False
    self.every_minutes = float(every_minutes)
    self.asynchronous = asynchronous
    self.last_save = time.monotonic()
    self.save_seconds = 0.0  # time the training loop spent blocked in save()

  def due(self, end_of_epoch):
    """Whether the policy asks for a save now (see the module docstring)."""
    if self.every_minutes <= 0:
      return end_of_epoch
    return time.monotonic() - self.last_save >= 60 * self.every_minutes

  @property
  def manager(self):
    if self._manager is None:
      os.makedirs(self.dir, exist_ok=True)
      self._manager = ocp.CheckpointManager(
          os.path.join(self.dir, 'state'),
          options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    return self._manager

  def exists(self):
    return os.path.isdir(os.path.join(self.dir, 'state'))

  def position(self):
    """The position of the newest intact save (see the module docstring), or None when the
    run has not started (or was reset)."""
    if not self.exists():
      return None
    bad = []
    with _quiet_library_logs():
      try:
        steps = sorted(self.manager.all_steps(), reverse=True)
      except Exception as e:  # pylint: disable=broad-except
        steps, bad = [], [('?', e)]
      for step in steps:
        try:
          position = self._verified(step)
        except Exception as e:  # pylint: disable=broad-except
          bad.append((step, e))
          continue
        if bad:
          print(f'progress save {bad[0][0]} in {self.dir} is corrupt ({_why(bad[0][1])}); '
                f'resuming from the save before it ({step})', file=sys.stderr, flush=True)
        return dict(position, state_step=step)
    if not bad:
      return None
    raise UserError(f'the progress checkpoint in {self.dir} is unreadable '
                    f'({_why(bad[0][1])}); delete that folder to restart the member in '
                    'progress, or pass --config.overwrite=True')

  def _verified(self, step):
    """The position of save `step` once its state matches the checksum saved with it."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        position=ocp.args.JsonRestore(), state=ocp.args.StandardRestore()))
    position = dict(restored.position)
    if 'checksum' in position and checksum(restored.state) != position['checksum']:
      raise ValueError('checksum mismatch')
    return position

  def save(self, state, *, stage, epoch, batch, lines):
    start = time.monotonic()
    with wd.disk_errors(self.dir):
      self.manager.wait_until_finished()  # the previous save
      wd.ensure_space(self.dir, wd.tree_bytes(state))
      step = self.manager.latest_step()
      step = 0 if step is None else step + 1
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          position=ocp.args.JsonSave({'stage': stage, 'epoch': epoch, 'batch': batch,
                                      'lines': lines, 'checksum': checksum(state)})))
      if not self.asynchronous or self.stop_requested:
        self.manager.wait_until_finished()
    self.last_save = time.monotonic()
    self.save_seconds += self.last_save - start

  def finish(self):
    """Waits for a save in flight."""
    if self._manager is not None:
      with wd.disk_errors(self.dir):
        self._manager.wait_until_finished()

  def restore(self, target, position):
    try:
      return self.manager.restore(position['state_step'], args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target))).state
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'cannot restore the progress checkpoint in {self.dir} '
                      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                      'delete that folder to restart the member in progress') from None

  def clear(self):
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None
    shutil.rmtree(self.dir, ignore_errors=True)

  # Signals.
  def install_signal_handlers(self):
    def handler(signum, _):
      if self.stop_requested:  # a second signal stops at once
        raise KeyboardInterrupt
      self.stop_requested = True
      print(f'\n{signal.Signals(signum).name}: saving progress at the end of this step...',
            flush=True)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return previous

  @staticmethod
  def restore_signal_handlers(previous):
    for s, h in previous.items():
      signal.signal(s, h)


def checksum(tree):
  """CRC-32 of every array's dtype, shape and bytes, combined independently of the tree's
  order and container types (a saved dataclass is restored as a dict)."""
  leaves = [np.asarray(x) for x in mesh.to_host(jax.tree_util.tree_leaves(tree))]
  crcs = sorted(zlib.crc32(np.ascontiguousarray(x).tobytes(),
                           zlib.crc32(f'{x.dtype.str}{x.shape}'.encode())) for x in leaves)
  return f'crc32:{zlib.crc32(np.asarray(crcs, np.uint32).tobytes()):08x}'


def _why(e):
  text = str(e).splitlines()[0][:160] if str(e) else ''
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


@contextlib.contextmanager
def _quiet_library_logs():
  """orbax and asyncio log every failed read with a traceback; position() reports once."""
  drop = logging.Filter('nothing')  # a filter named so that no record passes
  loggers = [logging.getLogger(n) for n in ('absl', 'asyncio')]
  for logger in loggers:
    logger.addFilter(drop)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(drop)


def truncate_lines(path, lines):
  """Drops metrics.jsonl lines written after the checkpoint being resumed (and a line cut
  short by a kill), in one truncate call: the kept lines are never rewritten."""
  if not os.path.exists(path) or not mesh.is_writer():
    return
  size = 0
  with open(path, 'rb') as f:
    for _ in range(lines):
      line = f.readline()
      if not line.endswith(b'\n'):
        break
      size += len(line)
  if size < os.path.getsize(path):
    os.truncate(path, size)


def count_lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for _ in f)
