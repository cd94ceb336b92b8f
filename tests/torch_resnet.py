"""A torchvision-identical ResNet-18/34/50 in plain torch.nn, the parity reference.

Parameter and buffer names equal torchvision.models.resnet's (conv1, bn1,
layer{1..4}.{i}.conv1/bn1/..., downsample.0 / downsample.1, fc), so its state dict
is what a torchvision or BYOL checkpoint holds. torchvision itself is not a
dependency. `width` scales all channel counts (64 = torchvision). forward returns
(logits, [layer1, layer2, layer3, layer4 outputs (NCHW), pooled (N, C)]).
"""

import torch
from torch import nn

_ARCHS = {
    'ResNet18': ('basic', (2, 2, 2, 2)),
    'ResNet34': ('basic', (3, 4, 6, 3)),
    'ResNet50': ('bottleneck', (3, 4, 6, 3)),
}


def _conv(cin, cout, k, stride=1):
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = _conv(cin, planes, 3, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(_conv(cin, planes, 1, stride),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    short = x if self.downsample is None else self.downsample(x)
    return self.relu(out + short)


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    cout = planes * 4
    self.conv1 = _conv(cin, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride)  # v1.5: stride on the 3x3
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv(planes, cout, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(_conv(cin, cout, 1, stride),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    short = x if self.downsample is None else self.downsample(x)
    return self.relu(out + short)


class TorchResNet(nn.Module):

  def __init__(self, arch='ResNet50', num_classes=1000, width=64):
    super().__init__()
    block, stages = _ARCHS[arch]
    block_cls = TorchBasicBlock if block == 'basic' else TorchBottleneck
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = width
    for i, n in enumerate(stages):
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(cin, width * 2**i, stride))
        cin = width * 2**i * block_cls.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():  # torchvision's init
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    maps = []
    for name in ('layer1', 'layer2', 'layer3', 'layer4'):
      x = getattr(self, name)(x)
      maps.append(x)
    pooled = torch.flatten(self.avgpool(x), 1)
    maps.append(pooled)
    return self.fc(pooled), maps


def randomize_(model, calib, seed=0):
  """Makes BN non-trivial but well scaled: running stats near those of `calib`.

  Every BN's running stats are set from a train-mode pass over `calib` (momentum
  1), then perturbed (mean + 0.2 std N(0,1), var * U(0.7, 1.4)); BN weights
  U(0.5, 1.5) except U(0.1, 0.5) on the last BN of each residual branch (small,
  as in trained ResNets), biases 0.2 N(0,1); fc bias N(0, 0.1). Keeps activations
  O(1) and the net well conditioned, so float32 rounding differences between the
  two libraries are not amplified block after block and 1e-4 absolute is a
  meaningful tolerance even for ResNet-50.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    last = {m.bn3 if hasattr(m, 'bn3') else m.bn2 for m in model.modules()
            if isinstance(m, (TorchBasicBlock, TorchBottleneck))}
    for bn in bns:
      low, high = (0.1, 0.5) if bn in last else (0.5, 1.5)
      bn.weight.copy_(low + (high - low) * torch.rand(bn.weight.shape, generator=g))
      bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
      bn.momentum = 1.0
    model.train()
    model(calib)
    for bn in bns:
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=g))
      bn.running_var.mul_(0.7 + 0.7 * torch.rand(std.shape, generator=g))
      bn.momentum = 0.1
      bn.num_batches_tracked.zero_()
    model.fc.bias.copy_(0.1 * torch.randn(model.fc.bias.shape, generator=g))
  model.eval()
  return model
