"""On-device image augmentation in JAX, equivalent to the reference's torchvision transforms.

Images arrive as uint8 [B, H, W, 3]; every function returns float32 [B, S, S, 3] normalised with
the ImageNet mean / std, or float64, computed in float64, under jax_enable_x64 (the float64
parity runs): in float32, XLA fuses the normalisation into the train step once for the forward
pass and once, transposed, for the weight gradient of the first convolution, and the two copies
can round differently (x / 255 - mean may be contracted into a fused multiply-add in one of
them), so pixels differ by one float32 ulp between the forward pass and that gradient, a 1e-7
relative error in the first layer's gradient that a float64 run must not have. All functions
are pure jnp code with static keyword arguments, so the engine can call them inside its jitted
train step, also under `jax.vmap` over ensemble members (one rng per member).

Transforms (config.transform_name):
  imagenet  train: RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip;
            eval: Resize(shorter side round(256 S / 224)) + CenterCrop(S)  (S=224: Resize(256)).
  cifar     train: zero-pad 4 (black, before normalising) + random crop S + horizontal flip;
            eval: normalise only (as 'none' when the images are not S x S).
  none      resize to S x S when the images are not S x S already, then normalise.
  swin_imagenet  train: data/randaugment.py (timm's create_transform of the reference's Swin
            configs; the step calls it); eval: as imagenet for S > 32, else as none.
  host_crop train only, for crops already cut and resized on the host (data/host_pipeline.py,
            'imagenet' on variable-size images): horizontal flip + normalise.

Resampling is a separable matrix product out = Wy @ image @ Wx^T with the weights of PIL's
resampling filters (triangle for bilinear, Keys a=-0.5 for bicubic, pixel centres at +0.5,
the filter widened by the scale when downscaling, weights renormalised at the borders). That is
what torchvision's resize of a tensor computes with antialias=True (its default since 0.17); when
upscaling it equals plain half-pixel bilinear interpolation with clamped borders. The crop box
is sampled as torchvision's RandomResizedCrop.get_params: 10 tries of (area, log-ratio), the
first valid one wins, else the central crop with the ratio clamped; the tries are vectorised.
"""

import math

import jax
import jax.numpy as jnp
from enstransfer_jax.errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TRANSFORMS = ('imagenet', 'cifar', 'none', 'swin_imagenet')
HOST_CROP = 'host_crop'  # train only; not a config choice
CIFAR_PADDING = 4
_HIGHEST = jax.lax.Precision.HIGHEST


def _triangle(x):
  return jnp.maximum(0.0, 1.0 - jnp.abs(x))


def _keys_cubic(x, a=-0.5):
  x = jnp.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


_FILTERS = {'bilinear': _triangle, 'bicubic': _keys_cubic}


def _real():
  """The dtype of the transforms' arithmetic: float64 under jax_enable_x64, else float32."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _check_args(transform, interpolation, train=False):
  if transform not in TRANSFORMS and not (train and transform == HOST_CROP):
    raise UserError(f'unknown transform {transform!r}; use one of {TRANSFORMS}')
  if interpolation not in _FILTERS:
    raise UserError(f'unknown interpolation {interpolation!r}; use one of {tuple(_FILTERS)}')


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
    raise UserError(f'images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}')


def resize_weights(out_size, in_size, start, length, interpolation='bilinear'):
  """[out_size, in_size] matrix (float64 under x64, else float32) resampling
  input[start:start + length] to out_size.

  `start` and `length` may be traced ints; pixels outside the window get weight 0.
  """
  fn = _FILTERS[interpolation]
  start = jnp.asarray(start, _real())
  length = jnp.asarray(length, _real())
  scale = length / out_size
  filter_scale = jnp.maximum(scale, 1.0)
  centre = start + (jnp.arange(out_size, dtype=_real()) + 0.5) * scale
  pixel = jnp.arange(in_size, dtype=_real())
  w = fn((pixel[None, :] + 0.5 - centre[:, None]) / filter_scale)
  w = jnp.where((pixel >= start) & (pixel < start + length), w, 0.0)
  return w / jnp.sum(w, axis=1, keepdims=True)


def _resample(image, wy, wx):
  """image [H, W, C] float, wy [S, H], wx [T, W] -> [S, T, C]."""
  rows = jnp.einsum('sh,hwc->swc', wy, image, precision=_HIGHEST)
  return jnp.einsum('swc,tw->stc', rows, wx, precision=_HIGHEST)


def _resample_batch(images, wy, wx):
  """images [B, H, W, C] float with weights shared by the batch -> [B, S, T, C]."""
  rows = jnp.einsum('sh,bhwc->bswc', wy, images, precision=_HIGHEST)
  return jnp.einsum('bswc,tw->bstc', rows, wx, precision=_HIGHEST)


def normalize(images01):
  """(x - mean) / std per channel for images already scaled to [0, 1]."""
  return (images01 - jnp.asarray(MEAN, _real())) / jnp.asarray(STD, _real())


def _uniform_int(rng, upper):
  """Uniform integers in [0, upper] elementwise (upper an int array)."""
  u = jax.random.uniform(rng, upper.shape)
  return jnp.minimum(jnp.floor(u * (upper + 1)).astype(jnp.int32), upper)


def sample_crop_boxes(rng, batch, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      tries=10):
  """int32 [B, 4] = (top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params."""
  k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
  area = float(height * width)
  target = area * jax.random.uniform(k_area, (batch, tries), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      k_ratio, (batch, tries), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid, axis=1)[:, None]  # the first valid try, as the loop would take
  # Fallback: the central crop with the aspect ratio clamped to the allowed range.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fw, fh = int(round(height * max(ratio))), height
  else:
    fw, fh = width, height
  found = jnp.any(valid, axis=1)
  h = jnp.where(found, jnp.take_along_axis(h, first, 1)[:, 0], fh)
  w = jnp.where(found, jnp.take_along_axis(w, first, 1)[:, 0], fw)
  top = jnp.where(found, _uniform_int(k_top, height - h), (height - fh) // 2)
  left = jnp.where(found, _uniform_int(k_left, width - w), (width - fw) // 2)
  return jnp.stack([top, left, h, w], axis=1).astype(jnp.int32)


def sample_train_params(rng, batch, height, width, *, transform, image_size):
  """Random parameters of the train transform: {'box': int32 [B, 4], 'flip': bool [B]}.

  box = (top, left, h, w) in the input image ('imagenet') or in the 4-padded image ('cifar').
  'none' draws nothing and returns {}.
  """
  _check_args(transform, 'bilinear', train=True)
  if transform == 'none':
    return {}
  if transform == HOST_CROP:
    return {'flip': jax.random.bernoulli(jax.random.split(rng)[1], 0.5, (batch,))}
  pad = 2 * CIFAR_PADDING
  if transform == 'cifar' and image_size > min(height, width) + pad:
    raise UserError(f'transform cifar: image_size {image_size} exceeds the padded '
                    f'{height}x{width} images; set config.image_size to the image size')
  k_box, k_flip = jax.random.split(rng)
  if transform == 'imagenet':
    box = sample_crop_boxes(k_box, batch, height, width)
  else:
    k_top, k_left = jax.random.split(k_box)
    size = jnp.full((batch,), image_size, jnp.int32)
    top = _uniform_int(k_top, height + pad - size)
    left = _uniform_int(k_left, width + pad - size)
    box = jnp.stack([top, left, size, size], axis=1)
  return {'box': box, 'flip': jax.random.bernoulli(k_flip, 0.5, (batch,))}


def apply_train_params(images, params, *, transform, image_size, interpolation='bilinear'):
  """The train transform with given random parameters (see sample_train_params)."""
  _check_args(transform, interpolation, train=True)
  _check_images(images)
  _, height, width, _ = images.shape
  x = images.astype(_real()) / 255.0
  if transform == 'none':
    return normalize(_resize_full(x, image_size, interpolation))
  if transform == HOST_CROP:
    if (height, width) != (image_size, image_size):
      raise UserError(f'host crops must be {image_size}x{image_size}, got {height}x{width}')
    flip = params['flip'][:, None, None, None]
    return normalize(jnp.where(flip, x[:, :, ::-1], x))
  if transform == 'imagenet':

    def one(image, box, flip):
      wy = resize_weights(image_size, height, box[0], box[2], interpolation)
      wx = resize_weights(image_size, width, box[1], box[3], interpolation)
      return _resample(image, wy, jnp.where(flip, wx[::-1], wx))

    return normalize(jax.vmap(one)(x, params['box'], params['flip']))
  p = CIFAR_PADDING
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # zero = black, padded before normalising

  def crop(image, box, flip):
    zero = jnp.zeros((), box.dtype)  # int64 boxes under JAX_ENABLE_X64
    out = jax.lax.dynamic_slice(image, (box[0], box[1], zero), (image_size, image_size, 3))
    return jnp.where(flip, out[:, ::-1], out)

  return normalize(jax.vmap(crop)(padded, params['box'], params['flip']))


def train_transform(rng, images, *, transform, image_size, interpolation='bilinear'):
  """uint8 [B, H, W, 3] -> augmented, normalised float32 [B, S, S, 3]; one rng per call."""
  _check_images(images)
  batch, height, width, _ = images.shape
  params = sample_train_params(
      rng, batch, height, width, transform=transform, image_size=image_size)
  return apply_train_params(
      images, params, transform=transform, image_size=image_size, interpolation=interpolation)


def _resize_full(x, size, interpolation):
  _, height, width, _ = x.shape
  if (height, width) == (size, size):
    return x
  wy = resize_weights(size, height, 0, height, interpolation)
  wx = resize_weights(size, width, 0, width, interpolation)
  return _resample_batch(x, wy, wx)


def eval_resize_size(image_size):
  """Shorter side before the centre crop: 256 for 224, scaled proportionally otherwise."""
  return int(round(256 * image_size / 224))


def eval_transform(images, *, transform, image_size, interpolation='bilinear'):
  """uint8 [B, H, W, 3] -> normalised float32 [B, S, S, 3], deterministic."""
  _check_args(transform, interpolation)
  _check_images(images)
  _, height, width, _ = images.shape
  x = images.astype(_real()) / 255.0
  if transform == 'swin_imagenet':
    transform = 'imagenet' if image_size > 32 else 'none'
  if transform != 'imagenet':
    return normalize(_resize_full(x, image_size, interpolation))
  short = eval_resize_size(image_size)
  if height <= width:  # torchvision Resize(int): shorter side -> short, longer truncated
    new_h, new_w = short, int(short * width / height)
  else:
    new_h, new_w = int(short * height / width), short
  top = int(round((new_h - image_size) / 2.0))
  left = int(round((new_w - image_size) / 2.0))
  wy = resize_weights(new_h, height, 0, height, interpolation)[top:top + image_size]
  wx = resize_weights(new_w, width, 0, width, interpolation)[left:left + image_size]
  return normalize(_resample_batch(x, wy, wx))
