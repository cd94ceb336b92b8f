"""Runs one experiment: python main.py --config configs/starsse.py [--config.seed=1] [--workdir DIR]

Also: python main.py --config configs/quickstart.py --analyze  (train, then write the analysis report)
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'work dir (default: experiments/<dataset>/'
                               '<group>/<model>_seed=<seed>/)')
_ANALYZE = flags.DEFINE_boolean('analyze', False, 'write the analysis report after training')
OVERRIDES = []  # [(FIELD, VALUE)] of the --config.FIELD=VALUE arguments (split_overrides)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _CONFIG.value is None:
    raise app.UsageError('pass --config configs/<experiment>.py')
  logging.set_verbosity(logging.ERROR)  # orbax and TFDS log every file they touch
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.errors import user_errors  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import mesh  # pylint: disable=g-import-not-at-top
  mesh.initialize_distributed()  # several processes (SLURM / JAX_COORDINATOR_ADDRESS) only
  with user_errors():
    config = configs.apply_overrides(_CONFIG.value, OVERRIDES)
    summary = run_experiment(config, _WORKDIR.value)
    if _ANALYZE.value:
      from enstransfer_jax import analyze  # pylint: disable=g-import-not-at-top
      analyze.analyze_runs([summary['workdir']])


def split_overrides(argv):
  """argv without its --config.FIELD=VALUE arguments (also --config.FIELD VALUE, a bare
  --config.FIELD = true and --noconfig.FIELD = false, as absl's flags), and those as
  [(FIELD, VALUE)] for configs.apply_overrides."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    name = arg.lstrip('-')
    if arg == '--':
      rest += argv[i:]
      break
    if arg.startswith('-') and name.startswith(('config.', 'noconfig.')):
      key, sep, value = name.partition('=')
      if key.startswith('noconfig.'):
        overrides.append((key[len('noconfig.'):], 'false'))
      elif sep:
        overrides.append((key[len('config.'):], value))
      elif i + 1 < len(argv) and not argv[i + 1].startswith('--'):
        overrides.append((key[len('config.'):], argv[i + 1]))
        i += 1
      else:
        overrides.append((key[len('config.'):], 'true'))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def check_config(argv, overrides):
  """One clear line for a config file that cannot be loaded or an override it refuses (a
  FIELD it does not have, a VALUE of the wrong type), before JAX is imported."""
  path = next((a.split('=', 1)[1] if '=' in a else argv[i + 1]
               for i, a in enumerate(argv) if a == '--config' or a.startswith('--config=')), None)
  if path is None:
    return
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, variant = path.partition(':')
  if not os.path.exists(path):
    print(f'error: config file {path} does not exist; see configs/ for the experiments', file=sys.stderr)
    sys.exit(2)
  spec = importlib.util.spec_from_file_location('experiment_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    where = f' (line {e.lineno})' if isinstance(e, SyntaxError) and e.lineno else ''
    _fail(f'config file {path} cannot be loaded: {type(e).__name__}{where}: '
          f'{(getattr(e, "msg", None) or str(e)).splitlines()[0] if str(e) else ""}; fix the file')
  if not callable(getattr(module, 'get_config', None)):
    _fail(f'config file {path} has no get_config() function; see configs/ for the form')
  try:
    configs.apply_overrides(module.get_config(variant) if variant else module.get_config(),
                            overrides)
  except ValueError as e:
    _fail(str(e))


def _fail(message):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag value (--config.epochs=abc) as one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{str(e).splitlines()[0]}; see python main.py --helpfull')


if __name__ == '__main__':
  ARGV, OVERRIDES = split_overrides(sys.argv)
  check_config(ARGV, OVERRIDES)
  app.run(main, argv=ARGV, flags_parser=parse_flags)
