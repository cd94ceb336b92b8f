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


class _RefBlock(torch.nn.Module):
  """The reference's ImageNetResNet blocks, written here: layers built in its order."""

  def __init__(self, cin, planes, stride, downsample, bottleneck):
    super().__init__()
    out = planes * (4 if bottleneck else 1)
    self.conv1 = torch.nn.Conv2d(cin, planes, 1 if bottleneck else 3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(planes)
    if bottleneck:
      self.conv3 = torch.nn.Conv2d(planes, out, 1, bias=False)
      self.bn3 = torch.nn.BatchNorm2d(out)
    self.downsample = downsample


def _reference_resnet(stages, bottleneck, width, num_classes):
  """torch's draws of the reference's ImageNetResNet(width): conv1, then per layer the
  downsample (built before its first block), then the blocks, the fc last."""
  net = torch.nn.Module()
  net.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
  net.bn1 = torch.nn.BatchNorm2d(width)
  inplanes, expansion = width, 4 if bottleneck else 1
  for i, n in enumerate(stages):
    planes, stride = width * 2**i, 1 if i == 0 else 2
    down = None
    if stride != 1 or inplanes != planes * expansion:
      down = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes * expansion, 1, stride,
                                                 bias=False),
                                 torch.nn.BatchNorm2d(planes * expansion))
    blocks = [_RefBlock(inplanes, planes, stride, down, bottleneck)]
    inplanes = planes * expansion
    blocks += [_RefBlock(inplanes, planes, 1, None, bottleneck) for _ in range(1, n)]
    setattr(net, f'layer{i + 1}', torch.nn.Sequential(*blocks))
  net.fc = torch.nn.Linear(inplanes, num_classes)
  return net


@pytest.mark.parametrize('arch,stages,bottleneck,width', [
    ('ResNet18', (2, 2, 2, 2), False, 8), ('ResNet50', (3, 4, 6, 3), True, 4)])
def test_torch_drawn_start_weights_are_the_references_bit_for_bit(arch, stages, bottleneck,
                                                                   width):
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  torch.manual_seed(123)
  before = torch.get_rng_state()
  got = checkpoints.flax_to_torch(torch_init.torch_drawn_variables(
      models.create_model(arch, 7, width=width), seed=5))
  assert torch.equal(torch.get_rng_state(), before)  # torch's global generator untouched
  torch.manual_seed(5)  # the reference's set_random_seed, then its model
  want = _reference_resnet(stages, bottleneck, width, 7).state_dict()
  names = [k for k in want if not k.endswith('num_batches_tracked')]
  assert sorted(names) == sorted(k for k in got if not k.endswith('num_batches_tracked'))
  for k in names:
    assert torch.equal(got[k], want[k].float()), k
  other = checkpoints.flax_to_torch(torch_init.torch_drawn_variables(
      models.create_model(arch, 7, width=width), seed=6))
  assert not torch.equal(other['conv1.weight'], got['conv1.weight'])
