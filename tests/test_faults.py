"""Bad inputs and faults that used to end in a traceback or in silently wrong output: each ends
in one line saying what to do (exit status 2 on the command line), or gives the right values.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from enstransfer_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args, **kwargs):
  return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                        timeout=300, **kwargs)


def _one_error_line(out):
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr[-3000:]
  return lines[0]


# Config files and flags (main.py checks them before importing JAX: cheap).
def test_config_file_and_flag_mistakes_are_one_line_exit_2(tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n  pass\n')
  (tmp_path / 'none.py').write_text('x = 1\n')
  line = _one_error_line(_cli(['main.py', '--config', str(tmp_path / 'syntax.py')]))
  assert 'SyntaxError (line 1)' in line and 'syntax.py' in line
  line = _one_error_line(_cli(['main.py', '--config', str(tmp_path / 'none.py')]))
  assert 'has no get_config()' in line
  line = _one_error_line(_cli(['main.py', '--config', 'configs/sse.py', '--config.epochs=abc']))
  assert '--config.epochs=abc' in line and "'abc'" in line


# Data: float64 runs with augmentation; 16-bit images.
def test_float64_cifar_crop_matches_numpy_slicing():
  from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
  with jax.enable_x64(True):
    params = augment.sample_train_params(jax.random.PRNGKey(1), 3, 12, 12, transform='cifar',
                                         image_size=12)
    got = augment.apply_train_params(images, params, transform='cifar', image_size=12)
    assert got.dtype == np.float64
  box, flip = np.asarray(params['box']), np.asarray(params['flip'])
  p = augment.CIFAR_PADDING
  padded = np.pad(images / 255.0, ((0, 0), (p, p), (p, p), (0, 0)))
  for i in range(3):
    want = padded[i, box[i, 0]:box[i, 0] + 12, box[i, 1]:box[i, 1] + 12]
    want = want[:, ::-1] if flip[i] else want
    want = (want - np.asarray(augment.MEAN)) / np.asarray(augment.STD)
    np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-12, atol=1e-12)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import predict  # pylint: disable=g-import-not-at-top
  values = np.random.default_rng(0).integers(0, 65536, (9, 7)).astype(np.uint16)
  Image.fromarray(values).save(tmp_path / 'grey16.png')
  (got,) = predict.read_images([str(tmp_path / 'grey16.png')])
  want = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
  assert got.shape == (9, 7, 3) and got.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(got[..., c], want)


# The library is serial by default: a plain script (no __main__ guard) can call rtd_loss.
def test_rtd_loss_from_a_plain_script_matches_the_reference_golden_value(tmp_path):
  script = tmp_path / 'plain.py'
  script.write_text(textwrap.dedent(f'''
      import json, sys
      sys.path.insert(0, {ROOT!r})
      import jax
      jax.config.update('jax_enable_x64', True)
      import numpy as np
      from enstransfer_jax.losses import rtd_loss
      g = np.load({os.path.join(ROOT, 'tests', 'data', 'rtd_reference.npz')!r})
      name = sorted(str(c) for c in g['cases'])[0]
      s = json.loads(str(g['meta']))['settings']
      value = rtd_loss(g[name + '__reg'], g[name + '__cur'], dim=s['dim'],
                       card=int(g[name + '__card']), lp=s['lp'], is_sym=s['is_sym'],
                       mode='minimum')
      print(json.dumps([name, float(value)]))
  '''))
  out = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  name, value = json.loads(out.stdout.strip().splitlines()[-1])
  with np.load(os.path.join(ROOT, 'tests', 'data', 'rtd_reference.npz')) as g:
    want = float(g[f'{name}__loss_minimum'])
  assert abs(value - want) <= 1e-5 * abs(want)


def test_user_error_is_a_value_error_and_caught_by_type():
  assert issubclass(errors.UserError, ValueError)
  assert errors.is_user_error(errors.UserError('x'))
  assert errors.is_user_error(OSError(28, 'No space left on device'))
  assert not errors.is_user_error(ValueError('a bug in a library'))
  assert not errors.is_user_error(KeyError('k'))


# One writing run per work dir.
def test_second_run_on_a_locked_work_dir_stops_naming_the_holder(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    lock = {'pid': holder.pid, 'host': socket.gethostname(), 'started': 'earlier'}
    (workdir / '.lock').write_text(json.dumps(lock))
    with pytest.raises(errors.UserError) as info:
      run_experiment(engine_util.tiny_config(num_fge=2), str(workdir))
  finally:
    holder.kill()
    holder.wait()
  assert str(info.value) == (
      f'work dir {workdir} is in use by process {holder.pid} on {socket.gethostname()} '
      f'(since earlier); wait for that run to end or choose another --workdir (if that '
      f"process is gone, delete {workdir / '.lock'})")
  assert sorted(os.listdir(workdir)) == ['.lock']  # nothing written
  assert json.loads((workdir / '.lock').read_text()) == lock


def test_stale_lock_is_taken_over_and_another_hosts_lock_is_not(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import workdir as wd  # pylint: disable=g-import-not-at-top
  gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  dead_pid = int(gone.stdout)  # a process that has exited
  path = tmp_path / '.lock'
  path.write_text(json.dumps({'pid': dead_pid, 'host': socket.gethostname(), 'started': 'x'}))
  with wd.WorkdirLock(str(tmp_path)):
    held = json.loads(path.read_text())
    assert (held['pid'], held['host']) == (os.getpid(), socket.gethostname())
    with pytest.raises(errors.UserError, match=f'in use by process {os.getpid()} on '):
      wd.WorkdirLock(str(tmp_path)).__enter__()  # a second run of this same process
  assert not path.exists()  # released
  path.write_text(json.dumps({'pid': os.getpid(), 'host': 'elsewhere', 'started': 'x'}))
  with pytest.raises(errors.UserError, match='in use by process .* on elsewhere'):
    wd.WorkdirLock(str(tmp_path)).__enter__()
  assert json.loads(path.read_text())['host'] == 'elsewhere'
