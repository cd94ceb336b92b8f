"""From-scratch ResNet variables drawn on the host as PyTorch draws them.

  torch_drawn_variables(model, seed)   drawn by torch itself, as the reference draws them:
                        torch.manual_seed(seed), then the reference's ImageNetResNet layers
                        constructed in its order, each by its own reset_parameters (the
                        engine's default from scratch; with the reference's seed these are
                        its very start weights, bit for bit)
  resnet_variables(model, rng, scheme) drawn by a numpy Generator with the rules below

  scheme 'torch'        torch's default layer initialisation, which the reference's
                        ImageNetResNet classes keep: convolutions and the linear layer
                        kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
                        the linear bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  scheme 'torchvision'  torchvision's resnet: convolutions kaiming_normal(fan_out, relu),
                        N(0, 2 / fan_out); the linear layer as torch's default
BatchNorm: scale 1, bias 0, running mean 0, running variance 1. fan_in of a conv is
in_channels x kh x kw, fan_out out_channels x kh x kw (a flax HWIO kernel).
The draws come from a numpy Generator, leaf after leaf in the tree's order; nothing is
compiled (`model.init` under jit costs seconds of XLA time for its random numbers).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from enstransfer_jax.errors import UserError

SCHEMES = ('torch', 'torchvision')


def resnet_variables(model, rng, scheme='torch'):
  """{'params', 'batch_stats'} of `model` (a models.resnet.ResNet), float32 numpy."""
  if scheme not in SCHEMES:
    raise UserError(f'init_scheme={scheme!r} is unknown; use one of {", ".join(SCHEMES)}')
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3)), train=False))

  def draw(path, leaf):
    names = [getattr(k, 'key', str(k)) for k in path]
    shape, name = leaf.shape, names[-1]
    if names[0] == 'batch_stats':
      return np.full(shape, 1.0 if name == 'var' else 0.0, np.float32)
    if name == 'scale':
      return np.ones(shape, np.float32)
    if name == 'bias' and names[-2] != 'fc':
      return np.zeros(shape, np.float32)
    if name == 'bias':  # fc
      bound = 1 / math.sqrt(shapes['params']['fc']['kernel'].shape[0])
      return rng.uniform(-bound, bound, shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1]))
    if len(shape) == 4 and scheme == 'torchvision':
      fan_out = int(np.prod(shape[:2])) * shape[-1]
      return (rng.standard_normal(shape) * math.sqrt(2 / fan_out)).astype(np.float32)
    bound = 1 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)

  out = jax.tree_util.tree_map_with_path(draw, shapes)
  return {'params': out['params'], 'batch_stats': out['batch_stats']}


def _conv(cin, cout, k):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.nn.Conv2d(cin, cout, k, bias=False).weight.detach()


def torch_drawn_variables(model, seed):
  """{'params', 'batch_stats'} of `model` (a models.resnet.ResNet), float32 numpy, drawn by
  torch's generator after torch.manual_seed(seed), layer after layer in the order the
  reference's ImageNetResNet constructs them: conv1; per block the downsample convolution
  (built before its block), then the block's convolutions; the fc weight, then its bias.
  BatchNorm draws nothing (scale 1, bias 0, mean 0, var 1). torch's global generator is left
  as it was."""
  import torch  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  basic, width = model.block == 'basic', int(model.width)
  expansion = 1 if basic else 4
  sd = {}
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(int(seed))
    sd['conv1.weight'] = _conv(3, width, 7)
    inplanes = width
    for i, blocks in enumerate(model.stage_sizes):
      planes, stride = width * 2**i, 1 if i == 0 else 2
      for b in range(blocks):
        pre = f'layer{i + 1}.{b}.'
        if b == 0 and (stride != 1 or inplanes != planes * expansion):
          sd[pre + 'downsample.0.weight'] = _conv(inplanes, planes * expansion, 1)
        if basic:
          shapes = [(inplanes, planes, 3), (planes, planes, 3)]
        else:
          shapes = [(inplanes, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
        for j, shape in enumerate(shapes, 1):
          sd[f'{pre}conv{j}.weight'] = _conv(*shape)
        inplanes = planes * expansion
    fc = torch.nn.Linear(inplanes, int(model.num_classes))
    sd['fc.weight'], sd['fc.bias'] = fc.weight.detach(), fc.bias.detach()
  for name in [k for k in sd if k != 'fc.weight' and k != 'fc.bias']:
    bn = (name[:-len('downsample.0.weight')] + 'downsample.1' if 'downsample' in name
          else name[:-len('.weight')].replace('conv', 'bn'))
    n = sd[name].shape[0]
    sd[bn + '.weight'], sd[bn + '.bias'] = torch.ones(n), torch.zeros(n)
    sd[bn + '.running_mean'], sd[bn + '.running_var'] = torch.zeros(n), torch.ones(n)
  return checkpoints.torch_to_flax(sd, model.arch)
