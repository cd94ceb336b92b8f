"""Writing a run's work dir (its layout and its readers: enstransfer_jax/rundir.py).

Only the writing process writes (mesh.is_writer). Every file is written to a temporary name
and renamed, so an interruption leaves either the old file or the new one, never half of one;
a full disk is one line naming the file; .lock keeps a second run out (WorkdirLock).
"""

import contextlib
import errno
import json
import os
import shutil
import socket
import time

import numpy as np

from enstransfer_jax import atomic, checkpoints, errors, rundir
from enstransfer_jax.errors import UserError
from enstransfer_jax.training import mesh


def default_workdir(config):
  """experiments/<dataset>/<group>/<model>_seed=<seed>/ as in the reference."""
  return os.path.join(config.work_dir, config.dataset, config.wandb_group,
                      f'{config.model.lower()}_seed={config.seed}')


def _disk_full(path):
  return OSError(errno.ENOSPC, f'no space left on the device while writing {path}; free some '
                 'space and run the same command again (the run resumes from its last '
                 'checkpoint)')


@contextlib.contextmanager
def disk_errors(path):
  """A full disk (or quota) becomes one line that names the file and says what to do."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if errors.is_disk_full(e):
      raise _disk_full(path) from None
    raise


def tree_bytes(tree):
  """Bytes of the arrays of a pytree (what saving it writes, before compression)."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree_util.tree_leaves(tree))


def ensure_space(path, nbytes):
  """Raises the disk-full error before writing `nbytes` under `path` when the device has less
  free space (plus 5 % and 256 kB for metadata), so nothing is half-written and the last good
  save stays as it is; a device that fills up meanwhile is still caught by disk_errors."""
  probe = os.path.abspath(path)
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if shutil.disk_usage(probe).free < int(1.05 * nbytes) + 256 * 1024:
    raise _disk_full(path)


class WorkdirLock:
  """The writing process's claim on a work dir: <workdir>/.lock, created exclusively
  (O_CREAT | O_EXCL), holds {"pid", "host", "started"} and is removed when the run ends.

  A second run on the same work dir stops with one line naming the holder. A lock left by a
  process that no longer exists (SIGKILL, a crash, a reboot) is stale: on the same host its
  pid is checked and the lock taken over. A lock from another host cannot be checked and is
  reported; the message names the file to delete once that run is known to be gone.
  """

  GRACE_SECONDS = 10.0  # a lock file still being written by its creator

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = rundir.RunDir(workdir).file('.lock')
    self.mine = None

  def __enter__(self):
    if not mesh.is_writer():
      return self
    os.makedirs(self.workdir, exist_ok=True)
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        text, holder = self._read()
        if self._held(holder):
          raise UserError(
              f"work dir {self.workdir} is in use by process {holder.get('pid', '?')} on "
              f"{holder.get('host', '?')} (since {holder.get('started', '?')}); wait for that "
              'run to end or choose another --workdir (if that process is gone, delete '
              f'{self.path})') from None
        self._remove_if_unchanged(text)  # stale: its process is gone
        continue
      with disk_errors(self.path), os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.mine = json.dumps(me)
      return self
    raise UserError(f'cannot take the lock {self.path}: other runs keep taking it; start one '
                    'run per work dir')

  def __exit__(self, *exc):
    if self.mine is not None:
      text, _ = self._read()
      if text is not None and _same(text, self.mine):
        os.remove(self.path)
      self.mine = None
    return False

  def _read(self):
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None, None
    try:
      return text, json.loads(text)
    except ValueError:
      return text, None

  def _held(self, holder):
    if holder is None:  # empty or cut short: being written now, or left by a crash
      try:
        return time.time() - os.path.getmtime(self.path) < self.GRACE_SECONDS
      except FileNotFoundError:
        return False
    if holder.get('host') != socket.gethostname():
      return True
    try:
      os.kill(int(holder['pid']), 0)
    except ProcessLookupError:
      return False
    except (PermissionError, KeyError, ValueError, TypeError):
      return True
    return True

  def _remove_if_unchanged(self, text):
    current, _ = self._read()
    if current is not None and (text is None or current == text):
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)


def _same(a, b):
  try:
    return json.loads(a) == json.loads(b)
  except ValueError:
    return False


def _atomic_write(path, write):
  if not mesh.is_writer():
    return
  with disk_errors(path):
    atomic.write(path, write)


def write_json(path, obj):
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write('\n')
  _atomic_write(path, write)


def save_npy(path, array):
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.save(f, array)
  _atomic_write(path, write)


def save_member(workdir, index, variables, probs, metadata):
  if not mesh.is_writer():
    return
  run = rundir.RunDir(workdir)
  path = run.member(index)
  os.makedirs(path, exist_ok=True)
  ensure_space(path, tree_bytes(variables) + np.asarray(probs).size * 4)
  with disk_errors(path):
    checkpoints.save_converted(run.member(index, rundir.CHECKPOINT), variables, metadata,
                               force=True)
  save_npy(run.member(index, rundir.PROBS), np.asarray(probs, np.float32))


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl (and mirrors it to wandb)."""

  def __init__(self, workdir, wandb_run=None):
    self.path = rundir.RunDir(workdir).file(rundir.METRICS)
    self.wandb_run = wandb_run

  def write(self, event, **fields):
    if not mesh.is_writer():
      return
    record = {'event': event, 'time': round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in fields.items()})
    with disk_errors(self.path), open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self.wandb_run is not None:
      prefix = f"member{record.get('member', '')}/" if 'member' in record else ''
      self.wandb_run.log({f'{prefix}{event}/{k}': v for k, v in record.items()
                          if isinstance(v, (int, float)) and k not in ('time',)})


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, 'dtype'):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
  return value
