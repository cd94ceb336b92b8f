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


# Progress saves are verified on read; a corrupt one falls back to the save before it.
def _largest_file(folder):
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_corrupt_progress_save_falls_back_to_the_previous_intact_one(tmp_path, capsys):
  from enstransfer_jax.training import resume  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  saved = [{'w': rng.normal(size=(64, 64)).astype(np.float32), 'n': np.arange(5)}
           for _ in range(2)]
  progress = resume.Progress(str(tmp_path))
  for k, state in enumerate(saved):
    progress.save(state, stage=0, epoch=k, batch=0, lines=3 + k)
  progress.finish()
  state_dir = os.path.join(str(tmp_path), 'progress', 'state')
  target = _largest_file(os.path.join(state_dir, '1', 'state'))
  data = bytearray(open(target, 'rb').read())
  data[len(data) // 2] ^= 0x10  # one flipped bit
  open(target, 'wb').write(bytes(data))
  position = resume.Progress(str(tmp_path)).position()
  assert (position['epoch'], position['lines'], position['state_step']) == (0, 3, 0)
  assert capsys.readouterr().err.strip() == (
      f"progress save 1 in {os.path.join(str(tmp_path), 'progress')} is corrupt (ValueError: "
      'checksum mismatch); resuming from the save before it (0)')
  restored = resume.Progress(str(tmp_path)).restore(
      {'w': np.zeros((64, 64), np.float32), 'n': np.zeros(5, np.int64)}, position)
  np.testing.assert_array_equal(restored['w'], saved[0]['w'])
  # Save 0 truncated as well: nothing intact is left, one line says what to do.
  open(_largest_file(os.path.join(state_dir, '0', 'state')), 'wb').close()
  with pytest.raises(errors.UserError) as info:
    resume.Progress(str(tmp_path)).position()
  assert str(info.value).startswith(f"the progress checkpoint in "
                                    f"{os.path.join(str(tmp_path), 'progress')} is unreadable (")
  assert str(info.value).endswith('delete that folder to restart the member in progress, or '
                                  'pass --config.overwrite=True')
  assert '\n' not in str(info.value)


def test_nan_message_names_the_member_whose_value_is_not_finite():
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import stage as stage_lib  # pylint: disable=g-import-not-at-top
  stage = [SimpleNamespace(index=2, init='pretrained'), SimpleNamespace(index=3, init='pretrained')]
  with pytest.raises(FloatingPointError) as info:
    stage_lib._check_finite({'loss': np.array([1.465, np.nan]), 'ce': np.array([1.4, np.inf])},  # pylint: disable=protected-access
                            stage, 1, 7)
  assert str(info.value) == ('loss became nan at member 2,3 (member 3), epoch 1, step 7; lower '
                             'lr or check the data; the members saved so far are kept')
  stage = [SimpleNamespace(index=2, init='first')]  # a StarSSE member: it trains with fge_lr
  with pytest.raises(FloatingPointError) as info:
    stage_lib._check_finite({'loss': np.array([np.inf])}, stage, 2, None)  # pylint: disable=protected-access
  assert str(info.value) == (
      'loss became inf at member 2, epoch 2 (epoch mean); lower fge_lr or check the data; the '
      'members saved so far are kept (a rerun with another fge_lr needs a new --workdir, where '
      'member 1 is retrained bit-identically)')


# Damaged or unfinished runs are refused unless the user asks for the members there.
@pytest.fixture
def damaged(starsse_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(starsse_run[0], workdir, ignore=shutil.ignore_patterns('analysis'))
  return workdir


def test_run_missing_a_member_is_refused_by_predict_and_export(damaged, tmp_path, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import ensemble, export, predict  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(damaged, 'members', '4', 'checkpoint'))
  message = (f'member 4 of {damaged} is missing (summary.json lists 1,2,3,4); pass --members '
             '1,2,3 to use the others (--allow-partial for analyze and the export), or train '
             'the run again with --config.overwrite=True')
  with pytest.raises(errors.UserError) as info:
    ensemble.Ensemble.load(damaged, progress=False)
  assert str(info.value) == message
  with pytest.raises(SystemExit) as exit_info:
    predict.main([damaged, '--dataset', 'digits'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == f'error: {message}'
  assert ensemble.Ensemble.load(damaged, members=[1, 3], progress=False).members == (1, 3)
  with pytest.raises(errors.UserError, match='member 4 of .* is missing'):
    export.export_members(damaged, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
  info = export.export_members(damaged, str(tmp_path / 'out'), allow_partial=True)
  assert info['files'][:3] == ['member_1.pt', 'member_2.pt', 'member_3.pt']
  assert info['note'] == f'partial run {damaged}: members 1,2,3 of 1,2,3,4 (missing 4)'
  assert f"Note: {info['note']}" in (tmp_path / 'out' / 'README.md').read_text()


def test_unfinished_or_damaged_runs_in_analyze(damaged):
  from enstransfer_jax import analyze  # pylint: disable=g-import-not-at-top
  os.remove(os.path.join(damaged, 'summary.json'))
  with pytest.raises(errors.UserError) as info:
    analyze.analyze_runs([damaged], progress=False)
  assert str(info.value) == (
      f'{damaged} holds an unfinished run (no summary.json; members 1,2,3,4 finished); run its '
      'training command again to finish it, or pass --allow-partial to use the finished members')
  assert analyze._check_runs([damaged], True, False) == [  # pylint: disable=protected-access
      f'partial run {damaged}: members 1,2,3,4 (the run has not finished)']
  with open(os.path.join(damaged, 'summary.json'), 'w') as f:
    f.write('{"members": [')  # cut short
  with pytest.raises(errors.UserError, match=r'summary.json is damaged \(not JSON: '):
    analyze.analyze_runs([damaged], progress=False)
  os.remove(os.path.join(damaged, 'summary.json'))
  probs = os.path.join(damaged, 'members', '2', 'test_probs.npy')
  with open(probs, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(errors.UserError, match='test_probs.npy is damaged'):
    analyze.analyze_runs([damaged], progress=False, allow_partial=True)


def test_analyze_refuses_a_run_twice_and_separates_settings(tmp_path):
  from enstransfer_jax import analyze  # pylint: disable=g-import-not-at-top
  runs = []
  for k, (subset, acc) in enumerate([((0, 1, 2, 3, 4), 0.9), ((5, 6, 7, 8, 9), 0.7),
                                     ((0, 1, 2, 3, 4), 0.8)]):
    d = tmp_path / f'r{k}'
    d.mkdir()
    (d / 'summary.json').write_text(json.dumps({
        'name': 'sse', 'metric': 'top1', 'members': [], 'mean_member_acc': acc,
        'diversity': 10.0, 'ensembles': [{'size': 1, 'acc': acc}]}))
    (d / 'config.json').write_text(json.dumps({'dataset': 'digits', 'model': 'ResNet18',
                                               'class_subset': subset}))
    runs.append(str(d))
  with pytest.raises(errors.UserError) as info:
    analyze.analyze_runs([runs[0], runs[0] + os.sep], tmp_path / 'cmp', compare_only=True,
                         progress=False)
  assert str(info.value) == (f'work dir {runs[0]}{os.sep} is given twice ({runs[0]} and '
                             f'{runs[0]}{os.sep}); give each run once')
  rows = analyze.analyze_runs(runs, tmp_path / 'cmp', compare_only=True,
                              progress=False)['comparison']
  by_method = {r['method']: r for r in rows}
  assert sorted(by_method) == ['sse (digits, classes 0,1,2,3,4, ResNet18)',
                               'sse (digits, classes 5,6,7,8,9, ResNet18)']
  low = by_method['sse (digits, classes 0,1,2,3,4, ResNet18)']
  assert low['runs'] == 2 and low['ensemble_acc_mean'] == pytest.approx(85.0)
  assert by_method['sse (digits, classes 5,6,7,8,9, ResNet18)']['ensemble_acc_mean'] == \
      pytest.approx(70.0)


# Minor cases: each a one-line error before anything is written.
def test_one_class_subset_is_refused(tmp_path):
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UserError, match=r'class_subset=\(5,\) keeps one class'):
    run_experiment(engine_util.tiny_config(class_subset=(5,)), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_checkpoint_of_another_width_or_with_nan_weights(starsse_run, tmp_path):
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  member = os.path.join(starsse_run[0], 'members', '1', 'checkpoint')
  with pytest.raises(errors.UserError) as info:
    run_experiment(engine_util.tiny_config(ckpt=member, width=8), str(tmp_path / 'run'))
  assert str(info.value) == (f'checkpoint {member} holds a ResNet18 of width 4 but config.width '
                             'is 8; set --config.width=4')
  _, variables = checkpoints.load_pretrained(member)
  variables = jax.tree_util.tree_map(np.array, dict(variables))
  variables['params']['fc']['bias'][3] = np.nan
  nan_ckpt = str(tmp_path / 'nan_ckpt')
  checkpoints.save_converted(nan_ckpt, variables, {'arch': 'ResNet18', 'num_classes': 10})
  with pytest.raises(errors.UserError) as info:
    run_experiment(engine_util.tiny_config(ckpt=nan_ckpt), str(tmp_path / 'run'))
  assert str(info.value) == (f"checkpoint {nan_ckpt} holds non-finite weights (['params']['fc']"
                             "['bias'] has 1 NaN or inf values); it is damaged: convert or "
                             'train it again')
  assert not (tmp_path / 'run').exists()


def test_bad_ood_spec_and_reproduce_mistakes_before_any_output(damaged, tmp_path, capsys):
  from enstransfer_jax import analyze, reproduce  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UserError, match="--ood 'nosuch:1': unknown dataset; use one of"):
    analyze.analyze_runs([damaged], ood='nosuch:1', progress=False)
  assert not os.path.exists(os.path.join(damaged, 'analysis'))
  for args, message in [
      (['--set', 'epochs=abc'], "error: --set epochs=abc: invalid literal for int() with base 10: 'abc'; "
                                "give a value of the field's type (now "),
      (['--out', damaged], f'error: --out {damaged} is the work dir of a single run (it holds '
                           'config.json); give reproduce a folder of its own')]:
    out = args if '--out' in args else args + ['--out', str(tmp_path / 'o')]
    with pytest.raises(SystemExit) as info:
      reproduce.main(['--task', 'digits', '--seeds', '1', '--no-progress'] + out)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and '\n' not in err, err
  assert not (tmp_path / 'o').exists()


def test_missing_member_checkpoint_on_resume_names_the_member(damaged):
  import shutil  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import resume, run_experiment  # pylint: disable=g-import-not-at-top
  from tests import conftest, engine_util  # pylint: disable=g-import-not-at-top
  os.remove(os.path.join(damaged, 'summary.json'))
  progress = resume.Progress(damaged)  # stopped after member 1
  progress.save({'x': np.zeros(2)}, stage=1, epoch=0, batch=0, lines=0)
  progress.finish()
  shutil.rmtree(os.path.join(damaged, 'members', '1', 'checkpoint'))
  with pytest.raises(errors.UserError) as info:
    run_experiment(engine_util.tiny_config(**conftest.STARSSE), damaged)
  path = os.path.join(damaged, 'members', '1', 'checkpoint')
  assert str(info.value) == (f'member 1 finished before the run stopped, but its checkpoint '
                             f'{path} is missing; restore it, or pass --config.overwrite=True to '
                             'train the run again')
