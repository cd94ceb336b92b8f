"""From-scratch ResNet init against PyTorch's own layers: torch's defaults (the reference's
ImageNetResNet keeps them) and torchvision's kaiming fan-out scheme."""

import math

import numpy as np
import pytest
import torch

from enstransfer_jax import models
from enstransfer_jax.models import torch_init


def _variables(scheme, width=16, seed=0):
  model = models.create_model('ResNet18', 100, width=width)
  return torch_init.resnet_variables(model, np.random.default_rng(seed), scheme)


def _torch_conv(kernel):
  h, w, i, o = kernel.shape
  return torch.nn.Conv2d(i, o, (h, w), bias=False).weight.detach().numpy()


def test_torch_scheme_matches_torch_layer_defaults():
  torch.manual_seed(0)
  v = _variables('torch')
  for kernel in (v['params']['conv1']['kernel'], v['params']['layer3']['0']['conv2']['kernel']):
    want = _torch_conv(kernel)
    bound = 1 / math.sqrt(np.prod(kernel.shape[:3]))
    assert np.abs(kernel).max() <= bound and np.abs(want).max() <= bound
    np.testing.assert_allclose(kernel.std(), want.std(), rtol=0.05)  # U(-b, b): b / sqrt(3)
  fc = torch.nn.Linear(128, 100)
  for got, want in ((v['params']['fc']['kernel'], fc.weight), (v['params']['fc']['bias'],
                                                               fc.bias)):
    want = want.detach().numpy()
    assert np.abs(got).max() <= 1 / math.sqrt(128)
    np.testing.assert_allclose(got.std(), want.std(), rtol=0.1)
  np.testing.assert_array_equal(v['params']['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(v['params']['bn1']['bias'], 0.0)
  np.testing.assert_array_equal(v['batch_stats']['bn1']['mean'], 0.0)
  np.testing.assert_array_equal(v['batch_stats']['bn1']['var'], 1.0)


def test_torchvision_scheme_is_kaiming_normal_fan_out():
  torch.manual_seed(0)
  v = _variables('torchvision')
  kernel = v['params']['layer3']['0']['conv2']['kernel']
  want = torch.empty(kernel.shape[3], kernel.shape[2], 3, 3)
  torch.nn.init.kaiming_normal_(want, mode='fan_out', nonlinearity='relu')
  np.testing.assert_allclose(kernel.std(), want.std().item(), rtol=0.05)
  assert abs(kernel.mean()) < 0.1 * kernel.std()


def test_draws_follow_the_seed_and_bad_scheme_is_one_line():
  a, b = _variables('torch', seed=1), _variables('torch', seed=2)
  np.testing.assert_array_equal(a['params']['conv1']['kernel'],
                                _variables('torch', seed=1)['params']['conv1']['kernel'])
  assert not np.allclose(a['params']['conv1']['kernel'], b['params']['conv1']['kernel'])
  with pytest.raises(ValueError, match="init_scheme='xavier' is unknown"):
    _variables('xavier')
