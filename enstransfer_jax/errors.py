"""Turns the errors a user can cause into one line on stderr and exit status 2.

A user error is an exception whose message is written for the user: OSError (a full disk, a
missing file), FloatingPointError (a NaN loss), and ValueError / KeyError / FileNotFoundError /
FileExistsError raised by this project's own code (its checks of configs, data and
checkpoints). The same types raised inside a library, and every other exception, are bugs:
they keep their traceback.
"""

import contextlib
import os
import sys
import traceback

_ALWAYS = (OSError, FloatingPointError)
_OURS = (ValueError, KeyError, FileNotFoundError, FileExistsError)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = (os.path.join(_ROOT, 'enstransfer_jax') + os.sep, os.path.join(_ROOT, 'configs') + os.sep,
             os.path.join(_ROOT, 'main.py'), os.path.join(_ROOT, 'convert_byol.py'))


def raised_by_project(e):
  """True when the innermost frame that raised `e` is this project's code."""
  frames = traceback.extract_tb(e.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_OWN_CODE)


def is_user_error(e):
  return isinstance(e, _ALWAYS) or (isinstance(e, _OURS) and raised_by_project(e))


def one_line(e):
  text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
  if isinstance(e, KeyError) and e.args:
    text = str(e.args[0])
  if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
    text = f'{text}: {e.filename}'
  return text.strip().splitlines()[0] if text.strip() else type(e).__name__


@contextlib.contextmanager
def user_errors():
  from enstransfer_jax.training.resume import Interrupted  # pylint: disable=g-import-not-at-top
  try:
    yield
  except Interrupted as e:
    print(f'interrupted at {e}; progress saved: run the same command again to resume',
          file=sys.stderr, flush=True)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
    sys.exit(2)
