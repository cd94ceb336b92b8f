"""One error type for the user's mistakes, and the command-line rule that turns them into one
line on stderr and exit status 2.

`UserError` (a ValueError, so `except ValueError` still catches it) is raised by this
project's checks of configs, data, checkpoints and work dirs; its message says what is wrong
and what to do. The command-line entry points (main.py, analyze, predict, reproduce,
convert_byol.py) catch it by type, together with OSError (a full disk, a missing file: the
message names the file) and FloatingPointError (a NaN loss: the message names the member).
Every other exception is a bug and keeps its traceback.
"""

import contextlib
import errno
import logging
import sys


class UserError(ValueError):
  """A bad input (config, data, checkpoint, work dir): the message says what to do."""


USER_ERRORS = (UserError, OSError, FloatingPointError)


class Interrupted(Exception):
  """Raised by the engine after it saved its progress on SIGINT / SIGTERM (training/resume.py):
  the command line says so and exits with status 130."""


_DISK_FULL_TEXT = ('No space left on device', "os_error_code='28'", 'Disk quota exceeded',
                   "os_error_code='122'")


def is_disk_full(e):
  """ENOSPC / EDQUOT as an OSError, or as the ValueError('RESOURCE_EXHAUSTED: ... No space
  left on device [os_error_code=28]') that orbax's tensorstore writes raise."""
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  return not isinstance(e, OSError) and any(t in str(e) for t in _DISK_FULL_TEXT)


def is_user_error(e):
  return isinstance(e, USER_ERRORS)


def one_line(e):
  text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
  if isinstance(e, KeyError) and e.args:
    text = str(e.args[0])
  if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
    text = f'{text}: {e.filename}'
  return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def report(e, code=2):
  """Prints `error: <one line>` and exits with `code`."""
  print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
  sys.exit(code)


class _QuietDiskFull(logging.Filter):
  """Drops the log records (with tracebacks) that orbax's background save threads write for a
  full disk: the same error reaches the main thread, which reports it in one line."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and is_disk_full(error))
                or is_disk_full(ValueError(record.getMessage())))


@contextlib.contextmanager
def user_errors():
  quiet = _QuietDiskFull()
  logging.getLogger('absl').addFilter(quiet)
  try:
    yield
  except Interrupted as e:
    print(f'interrupted at {e}; progress saved: run the same command again to resume',
          file=sys.stderr, flush=True)
    sys.exit(130)
  except KeyboardInterrupt:  # a second Ctrl-C while the progress save was being written
    print('interrupted; run the same command again to resume from the last complete progress '
          'save', file=sys.stderr, flush=True)
    sys.exit(130)
  except USER_ERRORS as e:
    report(e)
  finally:
    logging.getLogger('absl').removeFilter(quiet)
