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
import logging
import sys


class UserError(ValueError):
  """A bad input (config, data, checkpoint, work dir): the message says what to do."""


USER_ERRORS = (UserError, OSError, FloatingPointError)


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
    from enstransfer_jax.training import workdir  # pylint: disable=g-import-not-at-top
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and workdir.is_disk_full(error))
                or workdir.is_disk_full(ValueError(record.getMessage())))


@contextlib.contextmanager
def user_errors():
  from enstransfer_jax.training.resume import Interrupted  # pylint: disable=g-import-not-at-top
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
