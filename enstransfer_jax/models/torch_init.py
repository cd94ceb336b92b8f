"""From-scratch ResNet variables drawn on the host as PyTorch draws them.

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
