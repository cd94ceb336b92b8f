"""Turns the errors a user can cause into one line on stderr and exit status 2."""

import contextlib
import sys

# Errors whose message is written for the user: shown as one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, KeyError,
               OSError)


@contextlib.contextmanager
def user_errors():
  from enstransfer_jax.training.resume import Interrupted  # pylint: disable=g-import-not-at-top
  try:
    yield
  except Interrupted as e:
    print(f'interrupted at {e}; progress saved: run the same command again to resume',
          file=sys.stderr, flush=True)
    sys.exit(130)
  except USER_ERRORS as e:  # pylint: disable=catching-non-exception
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, KeyError) and e.args:
      text = str(e.args[0])
    message = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)
