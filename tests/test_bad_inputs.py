"""Every bad input of docs/bad-inputs.md's table: one clear line of its own, and no output damaged.

Each bad config is tried on a fresh work dir, which must not be created (inputs are checked
first); a config that differs from a finished run's is tried on that run (conftest.py's shared
StarSSE run), every file of which must be byte-identical afterwards.
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from enstransfer_jax import checkpoints
from enstransfer_jax.training import run_experiment
from enstransfer_jax.training import experiment, resume
from enstransfer_jax.training import workdir as wd
from tests import engine_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = hashlib.sha256(open(full, 'rb').read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def finished(starsse_run):
  return starsse_run[0]


def _pt_file(tmp_path, state):
  import torch  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'ckpt.pt')
  torch.save(state, path)
  return path


CONFIG_ERRORS = [
    ('unknown dataset', {'dataset': 'imagenet21k'}, "dataset='imagenet21k' is unknown"),
    ('unknown scheduler', {'scheduler': 'exponential'}, 'exponential'),
    ('fge_epochs not above fge_warmup_epochs', {'fge_epochs': 2, 'fge_warmup_epochs': 2},
     'must be greater than fge_warmup_epochs'),
    ('fmap_betas of the wrong length', {'fmap_betas': (1.0,)}, 'fmap_betas has 1 values'),
    ('unknown layer in freeze_layers', {'freeze_layers': ('layer5',)}, "unknown module 'layer5'"),
    ('unknown fmap_loss_type', {'fmap_loss_type': 'KL'}, "fmap_loss_type='KL' is unknown"),
    ('unknown regulariser', {'which_model_is_regularizer': 'last'}, 'which_model_is_regularizer'),
    ('unknown ensemble kind', {'ensemble': 'bagging'}, "ensemble='bagging' is unknown"),
    ('global_de without checkpoints', {'ensemble': 'global_de', 'ckpts': ()}, 'needs ckpts'),
    ('grad_accum_steps not dividing the batch', {'grad_accum_steps': 7}, 'grad_accum_steps=7'),
    ('unknown dtype', {'dtype': 'float8'}, "dtype='float8' is unknown"),
    ('missing checkpoint', {'ckpt': '/nonexistent/byol.pt'}, 'convert_byol.py'),
    ('class_subset with a label outside the dataset', {'class_subset': (3, 42)},
     'class_subset (3, 42) must hold distinct labels in 0..9'),
]


@pytest.mark.parametrize('what, overrides, message', CONFIG_ERRORS, ids=[e[0] for e in CONFIG_ERRORS])
def test_config_error_is_one_line_and_harmless(tmp_path, what, overrides, message):
  del what
  workdir = tmp_path / 'run'
  with pytest.raises((ValueError, FileNotFoundError)) as info:
    run_experiment(engine_util.tiny_config(num_fge=2, **overrides), str(workdir))
  assert message in str(info.value), str(info.value)
  assert '\n' not in str(info.value)
  assert 'different config' not in str(info.value)
  assert not workdir.exists()


def test_work_dir_holding_a_different_config(starsse_run):
  workdir, _, _, config = starsse_run
  before = _snapshot(workdir)
  config = config.copy_and_resolve_references()
  config.lr = 0.123
  with pytest.raises(ValueError) as info:
    run_experiment(config, workdir)
  assert str(info.value) == (
      f'work dir {workdir} holds a run with a different config (lr: 0.05 there, 0.123 here); '
      'choose another --workdir or pass --config.overwrite=True')
  assert _snapshot(workdir) == before


def test_checkpoint_of_another_architecture(finished, tmp_path):
  # A member of the ResNet-18 run handed to a ResNet-50 config.
  ckpt = os.path.join(finished, 'members', '1', 'checkpoint')
  before = _snapshot(finished)
  with pytest.raises(ValueError, match='holds a ResNet18 but config.model is ResNet50'):
    run_experiment(engine_util.tiny_config(model='ResNet50', ckpt=ckpt), str(tmp_path / 'run'))
  assert _snapshot(finished) == before


def test_file_that_is_not_a_checkpoint(tmp_path):
  bad = tmp_path / 'notes.pt'
  bad.write_text('not a checkpoint')
  with pytest.raises(ValueError) as info:
    checkpoints.load_pretrained(str(bad))
  assert 'notes.pt' in str(info.value) and '\n' not in str(info.value)


def test_state_dict_that_is_not_a_resnet(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  path = _pt_file(tmp_path, {'model_state': {'encoder.weight': torch.zeros(3, 3)}})
  with pytest.raises(ValueError) as info:
    checkpoints.load_pretrained(path)
  assert str(info.value) == ('not a ResNet-18/34/50 state dict: blocks per stage [0, 0, 0, 0], '
                             "bottleneck=False, first keys ['encoder.weight']")


def test_corrupt_member_checkpoint(finished, tmp_path):
  broken = tmp_path / 'member'
  shutil.copytree(os.path.join(finished, 'members', '1', 'checkpoint'), broken)
  for root, _, files in os.walk(broken / 'variables'):
    for name in files:
      open(os.path.join(root, name), 'wb').close()  # truncate every array file
  with pytest.raises(ValueError) as info:
    checkpoints.load_pretrained(str(broken))
  message = str(info.value)
  assert message.startswith(f'{broken} is corrupt or half-written (')
  assert message.endswith('); convert or train it again') and '\n' not in message


def test_corrupt_progress_file(tmp_path):
  workdir = str(tmp_path / 'run')
  config = engine_util.tiny_config(num_fge=2)
  experiment.prepare_workdir(config, workdir)
  progress = resume.Progress(workdir)
  progress.save({'x': np.zeros(2)}, stage=1, epoch=0, batch=0, lines=0)
  progress.finish()  # saves are asynchronous
  position = os.path.join(workdir, 'progress', 'state', '0', 'position', 'metadata')
  open(position, 'w').write('{"stage": 1, ')
  with pytest.raises(ValueError) as info:
    run_experiment(config, workdir)
  assert 'progress checkpoint' in str(info.value) and 'unreadable' in str(info.value)
  assert '\n' not in str(info.value)


def test_full_disk_while_saving_a_member(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')

  real_save = np.save

  def save(file, array, *args, **kwargs):  # the disk fills up when member 2 is written
    if os.path.join('members', '2') in getattr(file, 'name', str(file)):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(file, array, *args, **kwargs)

  monkeypatch.setattr(np, 'save', save)
  with pytest.raises(OSError) as info:
    run_experiment(engine_util.tiny_config(num_fge=2), workdir)
  assert 'no space left on the device while writing' in info.value.strerror
  assert 'resumes' in info.value.strerror
  # Member 1 is whole; no temporary file is left behind.
  assert np.load(os.path.join(workdir, 'members', '1', 'test_probs.npy')).shape[0] > 0
  assert not [f for f in os.listdir(os.path.join(workdir, 'members', '2')) if '.tmp-' in f]


def test_unknown_config_key_on_the_command_line():
  out = subprocess.run([sys.executable, 'main.py', '--config', 'configs/sse.py',
                        '--config.fge_epoch=3'], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [out.stderr.strip()]
  assert "unknown config key 'fge_epoch'" in out.stderr


def test_dataset_not_prepared_and_offline_via_cli(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'), NO_NETWORK='1')
  script = ('import sys; sys.argv = ["main.py", "--config", "configs/single.py", '
            '"--config.dataset=cifar10", "--config.ckpt=", '
            f'"--workdir={tmp_path}/run"]\n'
            'import tensorflow_datasets as tfds\n'
            'def offline(self, *a, **k):\n'
            '  raise ConnectionError("network is unreachable")\n'
            'tfds.core.DatasetBuilder.download_and_prepare = offline\n'
            'import runpy; runpy.run_path("main.py", run_name="__main__")\n')
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "dataset 'cifar10'" in lines[0] and 'download_and_prepare' in lines[0]
  assert not os.path.exists(os.path.join(tmp_path, 'run', 'members'))


def test_existing_output_dir_of_the_converter(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import torch_resnet  # pylint: disable=g-import-not-at-top
  source = _pt_file(tmp_path, torch_resnet.TorchResNet('ResNet18', 10, width=4).state_dict())
  out_dir = tmp_path / 'converted'
  out_dir.mkdir()
  (out_dir / 'keep.txt').write_text('precious')
  res = subprocess.run([sys.executable, 'convert_byol.py', source, str(out_dir)],
                       cwd=ROOT, capture_output=True, text=True)
  assert res.returncode != 0
  assert res.stderr.strip() == (f'error: {out_dir} already exists; pass --force (force=True) '
                                'to replace it')
  assert os.listdir(out_dir) == ['keep.txt']
  assert (out_dir / 'keep.txt').read_text() == 'precious'
  del torch


def test_summary_never_half_written(finished, tmp_path):
  """A process killed (SIGKILL) half-way through rewriting summary.json leaves the old file."""
  # Files are written through a temporary name and renamed: no .tmp- file survives a run.
  assert not [f for f in _snapshot(finished) if '.tmp-' in f]
  path = tmp_path / 'summary.json'
  shutil.copy(os.path.join(finished, 'summary.json'), path)
  before = path.read_bytes()
  script = (f'import sys; sys.path.insert(0, {ROOT!r})\n'
            'import json, os, signal\n'
            'from enstransfer_jax.training import workdir as wd\n'
            'def dump(obj, f, **kw):\n'
            '  f.write(json.dumps(obj)[:100]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n'
            'json.dump = dump\n'
            f'wd.write_json({str(path)!r}, {{"members": list(range(10000))}})\n')
  res = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
  assert res.returncode == -9, res.stderr[-2000:]
  assert path.read_bytes() == before
  half = [f for f in os.listdir(tmp_path) if '.tmp-' in f]
  assert len(half) == 1 and (tmp_path / half[0]).read_text().startswith('{"members": [0, 1')
