"""Microsoft-layout Swin Transformer (Swin-Tiny and smaller variants) in Flax.

Layout (Liu et al. 2021, "Swin Transformer", as in Microsoft's swin_transformer.py):
patch_embed (proj: PxP/P conv with bias, norm: LayerNorm) -> layers.0 .. layers.{S-1}
(each: blocks.0 .. blocks.{d-1}, then downsample = patch merging except in the last
stage) -> norm (LayerNorm) -> average over tokens -> head (Linear).

Block j of a stage: x + DropPath(W-MSA(norm1(x))), then x + DropPath(mlp(norm2(x)))
with mlp = fc1 -> exact GELU -> fc2 (hidden = mlp_ratio x dim). The attention is over
non-overlapping window x window token windows, with a learned relative-position bias
(relative_position_bias_table, (2w-1)^2 x heads); odd blocks roll the map by
(-w//2, -w//2) first (shifted windows) and add -100 to the logits of token pairs that
come from different regions of the rolled map (the attention mask). Where a stage's
resolution is <= window, the window shrinks to the resolution and the shift is 0 (as
Microsoft's code does: Swin-Tiny at 224 px has no shift in its last stage). Patch
merging concatenates the 2x2 neighbours (order (0,0), (1,0), (0,1), (1,1)), applies
norm (LayerNorm of 4C) and reduction (Linear 4C -> 2C, no bias). Drop-path rates rise
linearly from 0 to drop_path_rate over all blocks; LayerNorm eps 1e-5.

  logits, features = model.apply(variables, x, train=False)
  logits, features = model.apply(variables, x, train=True, rngs={'dropout': key})

x is NHWC float of shape (N, image_size, image_size, 3). features is a tuple of five
slots: slot i (i < 4) is the output of module layers.i as an NHWC float32 array (after
its patch merging for all but the last stage: Swin-Tiny at 224 px gives (N, 28, 28,
192), (N, 14, 14, 384), (N, 7, 7, 768), (N, 7, 7, 768)), None where the model has
fewer than i + 1 stages; slot 4 is the pooled vector (N, embed_dim * 2^(S-1)) after
the final norm, the head's input. These are the reference's `fmap_betas` slots.
train=True turns drop path on; it draws from the rng stream 'dropout' (DROPOUT_RNG), one
Bernoulli(1 - rate) per sample and residual branch, surviving samples scaled by
1 / (1 - rate) (timm's DropPath). Swin has no batch statistics: init_variables returns
{'params': ..., 'batch_stats': {}}, and apply(..., mutable=['batch_stats']) with such
variables returns {'batch_stats': {}}, so ResNet's calling convention holds unchanged.

Parameter paths equal the torch state-dict keys joined by '/', with the top-level
modules named 'patch_embed', 'layers.0', ..., 'norm', 'head' and blocks 'blocks.j'
(see enstransfer_jax/swin_checkpoints.py). Initialisation as Microsoft's: Linear
weights and relative_position_bias_table N(0, 0.02) (timm's trunc_normal_ cuts at
+-2, i.e. 100 standard deviations), Linear biases 0, LayerNorm 1 / 0, the patch conv as
torch's Conv2d default (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias).
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax.models import resnet
from enstransfer_jax.models.resnet import torch_linear_init

DROPOUT_RNG = 'dropout'  # rng stream of drop path (train=True)
# Top-level modules of Swin-Tiny in forward order: the names freeze_layers and
# stop_gradient_after take (a model with S stages has layers.0 .. layers.{S-1}).
MODULE_NAMES = ('patch_embed', 'layers.0', 'layers.1', 'layers.2', 'layers.3', 'norm',
                'head')
HEAD = 'head'
_DTYPES = ('float32', 'bfloat16', 'float16')
_LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class SwinSpec:
  """Hyper-parameters of a named Swin; `embed_dim` is create_model's `width`."""
  embed_dim: int
  depths: Tuple[int, ...]
  num_heads: Tuple[int, ...]
  window_size: int
  patch_size: int
  image_size: int
  drop_path_rate: float = 0.1
  mlp_ratio: float = 4.0


ARCHS = {
    # Microsoft's swin_tiny_patch4_window7_224 (the reference's configs/swin).
    'SwinTiny': SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 4, 224),
    # A small Swin for tests and CPU quickstarts: 32 px, 16x16 then 8x8 tokens, shifted
    # windows in both stages.
    'SwinNano': SwinSpec(16, (2, 2), (2, 4), 4, 2, 32),
}

normal_002 = nn.initializers.normal(0.02)


def canonical_name(name: str) -> Optional[str]:
  """'SwinTiny', 'swin_tiny', 'swin-tiny' -> 'SwinTiny'; None for a name that is no Swin."""
  key = str(name).lower().replace('-', '').replace('_', '')
  for arch in ARCHS:
    if key == arch.lower():
      return arch
  return None


def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) int index into the (2w-1)^2 bias table for each pair of window tokens."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing='ij'))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def attention_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """(num_windows, w*w, w*w) float32: 0 within a region of the rolled map, -100 across."""
  region = np.zeros((height, width), np.float32)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  count = 0
  for h in cuts:
    for w in cuts:
      region[h, w] = count
      count += 1
  windows = window_partition(region[None, :, :, None], window)[0, ..., 0]  # nW, w*w
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def window_partition(x, window: int):
  """(B, H, W, C) -> (B, num_windows, w*w, C), windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_reverse(windows, window: int, height: int, width: int):
  """Inverse of window_partition."""
  b, c = windows.shape[0], windows.shape[-1]
  x = windows.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def stage_geometry(spec_or_model, stage: int) -> Tuple[int, int, int]:
  """(resolution, effective window, shift of odd blocks) of a stage, as Microsoft clips."""
  res = spec_or_model.image_size // spec_or_model.patch_size // 2**stage
  window, shift = spec_or_model.window_size, spec_or_model.window_size // 2
  if res <= window:
    window, shift = res, 0
  return res, window, shift


def _dense(features, dtype, name, use_bias=True):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=normal_002, bias_init=nn.initializers.zeros, name=name)


def _layer_norm(dtype, name):
  return nn.LayerNorm(epsilon=_LN_EPS, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


def _drop_path(module, x, rate, train):
  """timm's DropPath: per-sample keep with probability 1 - rate, scaled by 1 / (1 - rate)."""
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng(DROPOUT_RNG), keep,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows with a relative-position bias."""
  num_heads: int
  window: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    """x: (B, nW, N, C) windows; mask: None or (nW, N, N) additive."""
    b, nw, n, c = x.shape
    hd = c // self.num_heads
    table = self.param('relative_position_bias_table', normal_002,
                       ((2 * self.window - 1)**2, self.num_heads), jnp.float32)
    qkv = _dense(3 * c, self.dtype, 'qkv')(x).reshape(b, nw, n, 3, self.num_heads, hd)
    q, k, v = jnp.moveaxis(qkv, 3, 0).transpose(0, 1, 2, 4, 3, 5)  # (B, nW, h, N, hd)
    q = q * jnp.asarray(hd**-0.5, q.dtype)
    logits = jnp.einsum('bwhnd,bwhmd->bwhnm', q, k).astype(jnp.float32)
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    logits = logits + bias
    if mask is not None:
      logits = logits + jnp.asarray(mask)[:, None]
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bwhnm,bwhmd->bwnhd', attn, v).reshape(b, nw, n, c)
    return _dense(c, self.dtype, 'proj')(out)


class Mlp(nn.Module):
  """fc1 -> exact GELU (torch nn.GELU) -> fc2."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, self.dtype, 'fc1')(x), approximate=False)
    return _dense(out, self.dtype, 'fc2')(x)


class SwinBlock(nn.Module):
  """One (shifted-)window transformer block on an NHWC token map."""
  num_heads: int
  window: int
  shift: int
  drop_path: float
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    _, h, w, c = x.shape
    y = _layer_norm(self.dtype, 'norm1')(x)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
    mask = attention_mask(h, w, self.window, self.shift) if self.shift else None
    y = WindowAttention(self.num_heads, self.window, self.dtype, name='attn')(
        window_partition(y, self.window), mask)
    y = window_reverse(y, self.window, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + _drop_path(self, y, self.drop_path, train)
    y = Mlp(int(c * self.mlp_ratio), self.dtype, name='mlp')(
        _layer_norm(self.dtype, 'norm2')(x))
    return x + _drop_path(self, y, self.drop_path, train)


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated -> norm (LayerNorm 4C) -> reduction (4C -> 2C, no bias)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = _layer_norm(self.dtype, 'norm')(x)
    return _dense(2 * c, self.dtype, 'reduction', use_bias=False)(x)


class SwinStage(nn.Module):
  """Microsoft's BasicLayer: blocks 'blocks.0', ... then (optionally) 'downsample'."""
  depth: int
  num_heads: int
  window: int
  shift: int
  drop_paths: Tuple[float, ...]
  downsample: bool
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    for j in range(self.depth):
      x = SwinBlock(self.num_heads, self.window, self.shift if j % 2 else 0,
                    self.drop_paths[j], self.mlp_ratio, self.dtype, name=f'blocks.{j}')(x, train)
    if self.downsample:
      x = PatchMerging(self.dtype, name='downsample')(x).astype(jnp.float32)
    return x


class PatchEmbed(nn.Module):
  """proj: P x P conv with stride P (bias), then norm: LayerNorm."""
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    init = torch_linear_init(3 * p * p)  # torch Conv2d default init (weight and bias)
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding='VALID', dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=init, bias_init=init, name='proj')(x)
    return _layer_norm(self.dtype, 'norm')(x)


class SwinTransformer(nn.Module):
  """Swin with Microsoft's module names; see the module docstring for the call convention."""
  num_classes: int
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 4
  image_size: int = 224
  drop_path_rate: float = 0.1
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32  # compute dtype; params stay float32, the residual stream too
  arch: str = ''  # registered name ('SwinTiny', ...), for checkpoints and logs

  def module_names(self) -> Tuple[str, ...]:
    """Top-level modules in forward order (the names stop_gradient_after takes)."""
    return (('patch_embed',) + tuple(f'layers.{i}' for i in range(len(self.depths)))
            + ('norm', HEAD))

  @nn.compact
  def __call__(self, x, train: bool = False,
               stop_gradient_after: Optional[str] = None,
               frozen_bn: Tuple[str, ...] = (), mask=None):
    """Returns (logits, (layers.0, layers.1, layers.2, layers.3, pooled)), all float32.

    stop_gradient_after: apply lax.stop_gradient to that module's output, so no
      gradient reaches the parameters below it (static; one of module_names()).
    frozen_bn: accepted for ResNet's signature; Swin has no BatchNorm, so valid module
      names are no-ops.
    mask: accepted for ResNet's signature (1 real sample, 0 padding) and unused: every
      Swin operation is per sample, so padding never changes the real samples' outputs.
    """
    del mask
    self._check_call(x, stop_gradient_after, frozen_bn)

    def cut(name, y):
      return jax.lax.stop_gradient(y) if stop_gradient_after == name else y

    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name='patch_embed')(
        x.astype(self.dtype))
    x = cut('patch_embed', x.astype(jnp.float32))
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    features = [None] * 4
    for i, depth in enumerate(self.depths):
      _, window, shift = stage_geometry(self, i)
      start = sum(self.depths[:i])
      stage = SwinStage(depth, self.num_heads[i], window, shift,
                        tuple(rates[start:start + depth]), i < len(self.depths) - 1,
                        self.mlp_ratio, self.dtype, name=f'layers.{i}')
      x = cut(f'layers.{i}', stage(x, train))
      if i < 4:
        features[i] = x
    x = cut('norm', _layer_norm(self.dtype, 'norm')(x).astype(jnp.float32))
    pooled = jnp.mean(x, axis=(1, 2))
    head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=normal_002, bias_init=nn.initializers.zeros, name=HEAD)
    logits = cut(HEAD, head(pooled.astype(self.dtype))).astype(jnp.float32)
    return logits, tuple(features) + (pooled,)

  def _check_call(self, x, stop_gradient_after, frozen_bn):
    size = self.image_size
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected NHWC images of shape (N, H, W, 3), got {x.shape}; '
                       'transpose NCHW batches with x.transpose(0, 2, 3, 1)')
    if x.shape[1:3] != (size, size):
      raise ValueError(f'this Swin takes {size}x{size} images, got {x.shape[1]}x'
                       f'{x.shape[2]}; resize them or create the model with '
                       f'image_size={x.shape[1]}')
    resnet.check_module_args(self.module_names(), stop_gradient_after, frozen_bn)


def check_spec(spec: SwinSpec):
  """ValueError naming the first hyper-parameter that makes the Swin impossible."""
  if len(spec.depths) != len(spec.num_heads) or not 1 <= len(spec.depths) <= 4:
    raise ValueError(f'depths {spec.depths} and num_heads {spec.num_heads} need the same '
                     'length, 1 to 4 stages')
  for i, heads in enumerate(spec.num_heads):
    dim = spec.embed_dim * 2**i
    if dim % heads:
      raise ValueError(f'embed dim {spec.embed_dim} (width) gives stage {i} {dim} '
                       f'channels, not divisible by its {heads} heads; use a multiple '
                       f'of {spec.num_heads[0]} (96 for SwinTiny)')
  if spec.image_size % spec.patch_size:
    raise ValueError(f'image_size {spec.image_size} is not a multiple of the patch '
                     f'size {spec.patch_size}')
  for i in range(len(spec.depths)):
    res, window, _ = stage_geometry(spec, i)
    if res < 1 or res % window or (i < len(spec.depths) - 1 and res % 2):
      raise ValueError(f'image_size {spec.image_size} gives stage {i} a {res}x{res} token '
                       f'map, which window {window} (and 2x2 patch merging) cannot tile; '
                       'use image_size 224 for SwinTiny, or patch x window x 2^(stages-1) '
                       'times an integer')


def create_model(name: str, num_classes: int, *, width: Optional[int] = None,
                 dtype: Any = jnp.float32, image_size: Optional[int] = None,
                 drop_path_rate: Optional[float] = None) -> SwinTransformer:
  """A registered Swin (ARCHS) as a Flax module; width = embed dim (96 for SwinTiny)."""
  arch = canonical_name(name)
  if arch is None:
    raise ValueError(f'unknown Swin {name!r}; valid names: {", ".join(ARCHS)}')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  spec = ARCHS[arch]
  if width is not None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
      raise ValueError(f'width (the Swin embed dim) must be a positive int, got {width!r}')
    spec = dataclasses.replace(spec, embed_dim=width)
  if image_size is not None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
      raise ValueError(f'image_size must be a positive int, got {image_size!r}')
    spec = dataclasses.replace(spec, image_size=image_size)
  if drop_path_rate is not None:
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
    spec = dataclasses.replace(spec, drop_path_rate=float(drop_path_rate))
  check_spec(spec)
  dt = resnet.parse_dtype(dtype, _DTYPES)
  return SwinTransformer(num_classes=num_classes, embed_dim=spec.embed_dim,
                         depths=tuple(spec.depths), num_heads=tuple(spec.num_heads),
                         window_size=spec.window_size, patch_size=spec.patch_size,
                         image_size=spec.image_size, drop_path_rate=spec.drop_path_rate,
                         mlp_ratio=spec.mlp_ratio, dtype=dt, arch=arch)


def init_variables(model: SwinTransformer, rng):
  """Fresh {'params', 'batch_stats': {}} for `model` (jitted init on a dummy batch)."""
  x = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  params = jax.jit(lambda r: model.init(r, x, train=False)['params'])(rng)
  return {'params': params, 'batch_stats': {}}


def replace_head(variables, num_classes: int, rng):
  """A copy of `variables` whose head is fresh with `num_classes` outputs.

  Init as torch nn.Linear, which is what the reference's change_head builds:
  weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  params = dict(variables['params'])
  if HEAD not in params:
    raise ValueError('variables have no params["head"]; expected Swin variables')
  fan_in = params[HEAD]['kernel'].shape[0]
  k_rng, b_rng = jax.random.split(rng)
  init = torch_linear_init(fan_in)
  params[HEAD] = {'kernel': init(k_rng, (fan_in, num_classes)),
                  'bias': init(b_rng, (num_classes,))}
  out = dict(variables)
  out['params'] = params
  out.setdefault('batch_stats', {})
  return out
