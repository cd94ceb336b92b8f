"""Atomic writes: a file or folder appears complete under its name, or not at all.

Everything is written under a temporary name beside the target and renamed into place once
complete (an existing target is replaced only then), so an interruption leaves either the old
output or the new one, never half of one.
"""

import os
from pathlib import Path
import shutil
import uuid


def temporary_name(path):
  """A fresh name beside `path` for writing it."""
  path = Path(path)
  return path.with_name(f'{path.name}.tmp-{uuid.uuid4().hex[:8]}')


def install(tmp, out):
  """Renames the complete `tmp` (file or folder) to `out`, replacing an existing `out`."""
  tmp, out = Path(tmp), Path(out)
  if tmp.is_file() or not (out.exists() or out.is_symlink()):
    os.replace(tmp, out)  # atomic for files, and for a folder onto nothing
    return
  old = out.with_name(f'{out.name}.old-{uuid.uuid4().hex[:8]}')
  os.rename(out, old)
  os.rename(tmp, out)
  if old.is_dir() and not old.is_symlink():
    shutil.rmtree(old)
  else:
    old.unlink()


def write(path, write_to):
  """Calls write_to(tmp) and installs tmp as `path`; removes tmp if anything fails."""
  tmp = temporary_name(path)
  try:
    write_to(tmp)
    install(tmp, path)
  finally:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
      tmp.unlink()
