"""Torchvision-layout ResNet-18/34/50 ("v1.5") in Flax, returning logits and feature maps.

Layout (as torchvision.models.resnet, channels scaled by `width`, 64 = torchvision):
7x7/2 stem conv (pad 3, no bias) -> BN -> ReLU -> 3x3/2 max-pool (pad 1, -inf) ->
layer1..layer4 (stride 1, 2, 2, 2; the stride of a bottleneck sits on its 3x3 conv)
-> global average pool -> fc. All paddings are explicit and symmetric like torch's
(Flax 'SAME' pads asymmetrically on stride 2 and is not equivalent). The convolutions and
the max-pool come from cpu_ops.py: XLA's own on a GPU, matrix-product lowerings where XLA's CPU
backend is slow (small maps), the same results to rounding.

  logits, features = model.apply(variables, x, train=False)

x is NHWC float; features is a tuple of five float32 arrays (float64 for a float64 model): the NHWC outputs of
layer1, layer2, layer3, layer4, then the pooled vector (N, 8 * width * expansion);
index i is the reference's `fmap_betas[i]` map (flattened there per sample).
With train=True the BatchNorms use batch statistics: call with
mutable=['batch_stats'] to get the updated running statistics.

Module names mirror the torch state dict, so the name map is a table of leaf names
(see enstransfer_jax/checkpoints.py): conv1, bn1, layer{1..4}/{block index}/
{conv1, bn1, conv2, bn2[, conv3, bn3], downsample/0 (1x1 conv), downsample/1 (BN)}, fc.

Initialisation as torchvision: convs kaiming_normal(fan_out, relu), BN scale 1 and
bias 0, fc weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch nn.Linear).
"""

import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from enstransfer_jax.models.batchnorm import BatchNorm
from enstransfer_jax.models.cpu_ops import Conv2d, max_pool

# Top-level modules in forward order; stop_gradient_after / frozen_bn / the
# reference's freeze_layers use these names.
MODULE_NAMES = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3',
                'layer4', 'fc')
BN_MODULES = ('bn1', 'layer1', 'layer2', 'layer3', 'layer4')  # modules holding BatchNorms

# name -> (block type, blocks per stage)
ARCHS = {
    'ResNet18': ('basic', (2, 2, 2, 2)),
    'ResNet34': ('basic', (3, 4, 6, 3)),
    'ResNet50': ('bottleneck', (3, 4, 6, 3)),
}
_DTYPES = ('float32', 'bfloat16', 'float16', 'float64')  # float64 needs jax_enable_x64

conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_linear_init(fan_in: int):
  """torch nn.Linear's default init for weight and bias: U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def canonical_name(name: str) -> str:
  """'resnet50', 'ImageNetResNet50', 'ResNet50' -> 'ResNet50'; ValueError otherwise."""
  key = str(name).lower().replace('imagenet', '', 1).replace('-', '')
  for arch in ARCHS:
    if key == arch.lower():
      return arch
  valid = ', '.join(list(ARCHS) + ['ImageNet' + a for a in ARCHS])
  raise ValueError(f'unknown model {name!r}; valid names: {valid}')


def wide_dtype(dtype):
  """dtype of parameters, statistics and outputs: float64 for a float64 model, else float32."""
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _conv(features, kernel, stride, pad, dtype, name):
  return Conv2d(features, kernel, stride, pad, dtype=dtype, param_dtype=wide_dtype(dtype),
                kernel_init=conv_kernel_init, name=name)


class Downsample(nn.Module):
  """Projection shortcut: '0' 1x1 strided conv, '1' BatchNorm (torch's Sequential)."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, frozen, mask=None):
    x = _conv(self.features, 1, self.stride, 0, self.dtype, '0')(x)
    return BatchNorm(dtype=self.dtype, name='1')(x, frozen, mask)


class BasicBlock(nn.Module):
  """Two 3x3 convs (stride on the first) plus shortcut; expansion 1."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, frozen, mask=None):
    out = _conv(self.planes, 3, self.stride, 1, self.dtype, 'conv1')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(out, frozen, mask))
    out = _conv(self.planes, 3, 1, 1, self.dtype, 'conv2')(out)
    out = BatchNorm(dtype=self.dtype, name='bn2')(out, frozen, mask)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = Downsample(self.planes, self.stride, self.dtype, name='downsample')(x, frozen, mask)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 (4x planes) plus shortcut; expansion 4."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, frozen, mask=None):
    out_features = self.planes * self.expansion
    out = _conv(self.planes, 1, 1, 0, self.dtype, 'conv1')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(out, frozen, mask))
    out = _conv(self.planes, 3, self.stride, 1, self.dtype, 'conv2')(out)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn2')(out, frozen, mask))
    out = _conv(out_features, 1, 1, 0, self.dtype, 'conv3')(out)
    out = BatchNorm(dtype=self.dtype, name='bn3')(out, frozen, mask)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.dtype, name='downsample')(x, frozen, mask)
    return nn.relu(out + x)


# Rematerialisation (ResNet(remat=True), config.remat): each residual block is wrapped in
# nn.remat with this policy. nothing_saveable: the backward pass keeps only each block's input
# (and the BatchNorm batch statistics it returns) and recomputes the block's convolutions,
# BatchNorms and ReLUs from it, so activation memory is about one block's worth plus one
# tensor per block instead of every intermediate. Same operations in the same order: the
# loss, gradients and running statistics are those of remat=False.
REMAT_POLICY = jax.checkpoint_policies.nothing_saveable


class ResLayer(nn.Module):
  """One stage: blocks named '0', '1', ... (torch's nn.Sequential indices)."""
  block: str
  planes: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, frozen, mask=None):
    block_cls = BasicBlock if self.block == 'basic' else Bottleneck
    if self.remat:  # argument 2 (`frozen`, counting self) is a Python bool
      block_cls = nn.remat(block_cls, policy=REMAT_POLICY, static_argnums=(2,))
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      x = block_cls(self.planes, stride, self.dtype, name=str(i))(x, frozen, mask)
    return x


class ResNet(nn.Module):
  """Torchvision ResNet; see the module docstring for the call convention."""
  block: str  # 'basic' | 'bottleneck'
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32  # compute dtype; params and batch stats stay float32 (float64 if it is)
  arch: str = ''  # canonical name, for checkpoints and logs
  remat: bool = False  # recompute each residual block in the backward pass (REMAT_POLICY)

  @nn.compact
  def __call__(self, x, train: bool = False,
               stop_gradient_after: Optional[str] = None,
               frozen_bn: Tuple[str, ...] = (), mask=None):
    """Returns (logits, (layer1, layer2, layer3, layer4, pooled)), all float32 (float64
    for a float64 model).

    stop_gradient_after: apply lax.stop_gradient to that module's output, so no
      gradient reaches the parameters below it (static; one of MODULE_NAMES).
    frozen_bn: module names whose BatchNorms use running averages (and do not
      update them) even when train=True (static; names without a BN are no-ops).
    mask: optional float [N], 1 for real samples and 0 for padding: train-mode BatchNorm
      statistics then cover the real samples only (see batchnorm.py).
    """
    _check_call(x, stop_gradient_after, frozen_bn)
    frozen = lambda name: (not train) or (name in frozen_bn)

    def cut(name, y):
      return jax.lax.stop_gradient(y) if stop_gradient_after == name else y

    x = x.astype(self.dtype)
    x = cut('conv1', _conv(self.width, 7, 2, 3, self.dtype, 'conv1')(x))
    x = cut('bn1', BatchNorm(dtype=self.dtype, name='bn1')(x, frozen('bn1'), mask))
    x = cut('relu', nn.relu(x))
    x = cut('maxpool', max_pool(x, 3, 2, 1))
    features = []
    for i, size in enumerate(self.stage_sizes):
      name = f'layer{i + 1}'
      layer = ResLayer(self.block, self.width * 2**i, size, 1 if i == 0 else 2,
                       self.dtype, self.remat, name=name)
      x = cut(name, layer(x, frozen(name), mask))
      features.append(x.astype(wide_dtype(self.dtype)))
    pooled = jnp.mean(x.astype(wide_dtype(self.dtype)), axis=(1, 2))
    features.append(pooled)
    fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=wide_dtype(self.dtype),
                  kernel_init=torch_linear_init(pooled.shape[-1]),
                  bias_init=torch_linear_init(pooled.shape[-1]), name='fc')
    logits = cut('fc', fc(pooled.astype(self.dtype))).astype(wide_dtype(self.dtype))
    return logits, tuple(features)


def check_module_args(names, stop_gradient_after, frozen_bn):
  """One-line errors for a stop_gradient_after / frozen_bn that names no module of `names`."""
  if stop_gradient_after is not None and stop_gradient_after not in names:
    raise ValueError(f'stop_gradient_after={stop_gradient_after!r} is not a module '
                     f'name; use one of {", ".join(names)} or None')
  if isinstance(frozen_bn, str):
    raise ValueError(f'frozen_bn must be a tuple of module names, got the string '
                     f'{frozen_bn!r}; write ({frozen_bn!r},)')
  bad = [n for n in frozen_bn if n not in names]
  if bad:
    raise ValueError(f'frozen_bn has unknown module name(s) {bad}; use names from '
                     f'{", ".join(names)}')


def _check_call(x, stop_gradient_after, frozen_bn):
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'expected NHWC images of shape (N, H, W, 3), got {x.shape}; '
                     'transpose NCHW batches with x.transpose(0, 2, 3, 1)')
  check_module_args(MODULE_NAMES, stop_gradient_after, frozen_bn)


def create_model(name: str, num_classes: int, *, width: int = 64,
                 dtype: Any = jnp.float32, remat: bool = False) -> ResNet:
  """ResNet18|34|50 (or the reference's ImageNetResNet18|34|50) as a Flax module; remat:
  rematerialise each residual block (REMAT_POLICY), same results in less memory."""
  arch = canonical_name(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise ValueError(f'width must be a positive int (64 = torchvision), got {width!r}')
  dt = parse_dtype(dtype, _DTYPES)
  block, stages = ARCHS[arch]
  return ResNet(block=block, stage_sizes=stages, num_classes=num_classes,
                width=width, dtype=dt, arch=arch, remat=bool(remat))


def parse_dtype(dtype, allowed):
  """jnp.dtype of a name or dtype among `allowed` (names); one-line errors otherwise."""
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    dt = None
  if dt is None or dt.name not in allowed:
    raise ValueError(f'dtype must be one of {", ".join(allowed)}, got {dtype!r}')
  if dt == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) "
                     'before any JAX computation')
  return dt


def init_variables(model: ResNet, rng, image_size: int = 32):
  """Fresh {'params', 'batch_stats'} for `model` (jitted init on a dummy batch)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(lambda r: model.init(r, x, train=False))(rng)


def replace_head(variables, num_classes: int, rng):
  """A copy of `variables` whose fc is freshly initialised with `num_classes` outputs.

  Init as torch nn.Linear: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  params = dict(variables['params'])
  if 'fc' not in params:
    raise ValueError('variables have no params["fc"]; expected ResNet variables')
  fan_in = params['fc']['kernel'].shape[0]
  k_rng, b_rng = jax.random.split(rng)
  init = torch_linear_init(fan_in)
  params['fc'] = {'kernel': init(k_rng, (fan_in, num_classes)),
                  'bias': init(b_rng, (num_classes,))}
  out = dict(variables)
  out['params'] = params
  return out
