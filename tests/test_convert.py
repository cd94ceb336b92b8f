"""PyTorch <-> Flax checkpoint conversion: name map, exact round trips, file layouts, errors, CLI.

The reference is the torchvision-named PyTorch twin in tests/torch_resnet.py: its
state dict keys and shapes, torch.save / torch.load files, and hashlib's sha256.
"""

import argparse
import hashlib
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert_byol
from enstransfer_jax import checkpoints
from enstransfer_jax.checkpoints import (flax_to_torch, infer_arch, load_pretrained,
                                         save_converted, torch_to_flax)
from enstransfer_jax.models import create_model
from torch_resnet import TorchResNet

REPO = Path(__file__).resolve().parents[1]


def _state_dict(arch='ResNet18', width=8, classes=10, seed=0):
  """A torch state dict with every tensor random (BN stats included)."""
  torch.manual_seed(seed)
  sd = TorchResNet(arch, classes, width).state_dict()
  g = torch.Generator().manual_seed(seed)
  for k, v in sd.items():
    if v.is_floating_point():
      v.copy_(torch.rand(v.shape, generator=g) + (0.5 if 'running_var' in k else -0.5))
    else:
      v.fill_(7)  # num_batches_tracked: ignored by the converter
  return sd


def _leaves_equal(a, b):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(fa, fb))


def _listing(d):
  return sorted(os.listdir(d))


@pytest.mark.parametrize('arch', ['ResNet18', 'ResNet34', 'ResNet50'])
def test_name_map_is_torchvision_state_dict(arch):
  model = create_model(arch, 1000, width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  table = checkpoints.name_map(shapes)
  torch_sd = TorchResNet(arch, 1000, 8).state_dict()
  assert set(table) == {k for k in torch_sd if not k.endswith('num_batches_tracked')}
  for key, (col, path) in table.items():
    leaf = shapes[col]
    for p in path:
      leaf = leaf[p]
    # numel equal and the layout rule: HWIO <-> OIHW, (in, out) <-> (out, in).
    t = tuple(torch_sd[key].shape)
    want = {4: lambda s: (s[3], s[2], s[0], s[1]), 2: lambda s: s[::-1]}.get(
        len(leaf.shape), lambda s: s)(leaf.shape)
    assert tuple(want) == t, key
  assert infer_arch(torch_sd) == arch


def test_round_trips_are_bit_exact():
  sd = _state_dict('ResNet18')
  back = flax_to_torch(torch_to_flax(sd, 'ResNet18'))
  assert list(back) == list(sd)  # torchvision key order, num_batches_tracked included
  for k, v in sd.items():
    if k.endswith('num_batches_tracked'):
      assert back[k].item() == 0 and back[k].dtype == torch.int64
    else:
      assert back[k].dtype == torch.float32 and torch.equal(back[k], v), k
  # flax -> torch -> flax, from random Flax variables.
  variables = torch_to_flax(_state_dict('ResNet50', seed=1), 'ResNet50')
  variables = jax.tree_util.tree_map(
      lambda a: np.random.default_rng(a.size).normal(size=a.shape).astype(np.float32),
      variables)
  assert _leaves_equal(torch_to_flax(flax_to_torch(variables), 'ResNet50'), variables)


@pytest.mark.parametrize('layout', ['model_state', 'state_dict+module', 'model', 'bare'])
def test_checkpoint_layouts(tmp_path, layout):
  sd = _state_dict('ResNet18')
  obj = {
      'model_state': {'model_state': sd, 'epoch': 3},
      'state_dict+module': {'state_dict': {'module.' + k: v for k, v in sd.items()},
                            'optimizer': {'lr': 0.1}},
      'model': {'model': sd},
      'bare': sd,
  }[layout]
  path = tmp_path / 'ckpt.pt'
  torch.save(obj, path)
  arch, variables = load_pretrained(path)
  assert arch == 'ResNet18'
  np.testing.assert_array_equal(variables['params']['layer2']['0']['conv1']['kernel'],
                                sd['layer2.0.conv1.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['layer4']['1']['bn2']['var'],
                                sd['layer4.1.bn2.running_var'].numpy())
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], sd['fc.weight'].numpy().T)


def _one_line_error(exc_type, fn, *args, match, **kwargs):
  with pytest.raises(exc_type, match=match) as info:
    fn(*args, **kwargs)
  assert '\n' not in str(info.value)
  return str(info.value)


def test_wrong_architecture_and_shapes(tmp_path):
  sd18 = _state_dict('ResNet18')
  msg = _one_line_error(ValueError, torch_to_flax, sd18, 'ResNet34',
                        match='not a torchvision ResNet34')
  assert "missing 'layer1.2.conv1.weight'" in msg and 'unexpected none' in msg
  msg = _one_line_error(ValueError, torch_to_flax, _state_dict('ResNet50'), 'ResNet34',
                        match='not a torchvision ResNet34')
  assert "missing 'layer1.0.conv1.weight'" not in msg and "unexpected 'layer1.0.conv3" in msg
  bad = dict(sd18, **{'layer2.0.conv1.weight': torch.zeros(16, 8, 5, 5)})
  _one_line_error(ValueError, torch_to_flax, bad, 'ResNet18',
                  match=r"shape mismatch for 'layer2.0.conv1.weight': expected "
                        r"\(16, 8, 3, 3\), got \(16, 8, 5, 5\)")
  not_resnet = {'encoder.weight': torch.zeros(3), 'head.bias': torch.zeros(2)}
  _one_line_error(ValueError, infer_arch, not_resnet, match='not a ResNet-18/34/50')
  # A converted dir refuses another architecture.
  save_converted(tmp_path / 'r18', torch_to_flax(sd18, 'ResNet18'))
  _one_line_error(ValueError, load_pretrained, tmp_path / 'r18', 'ResNet50',
                  match='holds a ResNet18, not the requested ResNet50')


def test_unreadable_inputs_leave_nothing_behind(tmp_path):
  garbage = tmp_path / 'garbage.pt'
  garbage.write_text('not a checkpoint')
  out = tmp_path / 'out'
  _one_line_error(ValueError, checkpoints.convert_file, garbage, out,
                  match='is not a readable PyTorch checkpoint')
  torch.save([1, 2, 3], tmp_path / 'list.pt')
  _one_line_error(ValueError, load_pretrained, tmp_path / 'list.pt', match='holds a list')
  torch.save({'epoch': 3}, tmp_path / 'nosd.pt')
  _one_line_error(ValueError, load_pretrained, tmp_path / 'nosd.pt', match='holds no state dict')
  pickled = tmp_path / 'pickled.pt'
  torch.save({'args': argparse.Namespace(lr=0.1), 'state_dict': _state_dict()}, pickled)
  _one_line_error(ValueError, load_pretrained, pickled, match='--trust-pickle')
  assert load_pretrained(pickled, trust_pickle=True)[0] == 'ResNet18'
  msg = _one_line_error(FileNotFoundError, load_pretrained, tmp_path / 'nope',
                        match='no pre-trained checkpoint')
  assert 'python convert_byol.py IN.pt OUT_DIR' in msg
  os.mkdir(tmp_path / 'empty')
  _one_line_error(ValueError, load_pretrained, tmp_path / 'empty', match='no metadata.json')
  assert _listing(tmp_path) == ['empty', 'garbage.pt', 'list.pt', 'nosd.pt', 'pickled.pt']


def test_save_load_converted_and_atomicity(tmp_path, monkeypatch):
  src = tmp_path / 'byol.pt'
  sd = _state_dict('ResNet18')
  torch.save({'state_dict': sd}, src)
  out = tmp_path / 'conv'
  meta = checkpoints.convert_file(src, out)
  assert _listing(tmp_path) == ['byol.pt', 'conv']
  assert _listing(out) == ['metadata.json', 'variables']
  on_disk = json.loads((out / 'metadata.json').read_text())
  assert on_disk == meta
  assert meta['source_sha256'] == hashlib.sha256(src.read_bytes()).hexdigest()
  assert (meta['architecture'], meta['num_classes'], meta['width'], meta['source'],
          meta['head_replaced']) == ('ResNet18', 10, 8, 'byol.pt', False)
  assert meta['num_params'] == sum(v.numel() for k, v in sd.items() if 'running' not in k
                                   and 'num_batches' not in k)
  arch, variables = load_pretrained(out)
  assert arch == 'ResNet18' and _leaves_equal(variables, torch_to_flax(sd, 'ResNet18'))
  # Existing output without force: one-line error, nothing touched.
  before = (out / 'metadata.json').read_bytes()
  _one_line_error(FileExistsError, checkpoints.convert_file, src, out, match='--force')
  assert (out / 'metadata.json').read_bytes() == before
  # A failure while writing leaves neither a half-written nor a temporary dir.
  def boom(*args, **kwargs):
    raise OSError('disk full')
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ocp.PyTreeCheckpointer, 'save', boom)
  with pytest.raises(OSError, match='disk full'):
    checkpoints.convert_file(src, tmp_path / 'conv2')
  with pytest.raises(OSError, match='disk full'):
    checkpoints.convert_file(src, out, force=True)
  assert _listing(tmp_path) == ['byol.pt', 'conv'] and (out / 'metadata.json').read_bytes() == before
  monkeypatch.undo()
  # --num-classes: a fresh torch-Linear head, the rest unchanged.
  meta = checkpoints.convert_file(src, out, num_classes=5, seed=1, force=True)
  assert meta['head_replaced'] and meta['num_classes'] == 5
  _, new = load_pretrained(out)
  assert new['params']['fc']['kernel'].shape == (64, 5)
  assert np.abs(new['params']['fc']['kernel']).max() <= 1 / 8
  assert _leaves_equal(new['params']['layer3'], variables['params']['layer3'])


def test_cli(tmp_path, capsys):
  src = tmp_path / 'in.pt'
  sd = _state_dict('ResNet34', width=4)
  torch.save({'model_state': sd}, src)
  out = tmp_path / 'flax'
  run = subprocess.run([sys.executable, str(REPO / 'convert_byol.py'), str(src), str(out)],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, 'PYTHONPATH': str(REPO)}, timeout=300)
  assert run.returncode == 0, run.stderr
  assert 'ResNet34' in run.stdout and hashlib.sha256(src.read_bytes()).hexdigest() in run.stdout
  # Existing output: exit 2, one line, nothing touched (in-process from here on).
  assert convert_byol.main([str(src), str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'already exists' in err
  assert convert_byol.main([str(tmp_path / 'missing.pt'), str(tmp_path / 'x')]) == 1
  assert capsys.readouterr().err.startswith('error: no PyTorch checkpoint file')
  # Back to torch: the reference's {'model_state': ...} layout, bit-exact.
  assert convert_byol.main(['--to-torch', str(out), str(tmp_path / 'back.pt')]) == 0
  back = torch.load(tmp_path / 'back.pt', weights_only=True)['model_state']
  model = TorchResNet('ResNet34', 10, 4)
  model.load_state_dict(back)  # strict: every torchvision key present
  assert all(torch.equal(back[k], v) for k, v in sd.items() if 'num_batches' not in k)
  assert _listing(tmp_path) == ['back.pt', 'flax', 'in.pt']
