"""The reference's Swin train transform (timm's create_transform) on the device, in JAX.

transform_name 'swin_imagenet', per image of a uint8 [B, H, W, 3] batch:
  1. image_size > 32: RandomResizedCrop(S, scale (0.08, 1), ratio (3/4, 4/3)) with
     `interpolation` (bicubic in the Swin configs) and a horizontal flip (p 0.5);
     image_size <= 32: RandomCrop(S, padding=4) and the flip (the reference replaces the
     crop for small images); the result is rounded and clipped to uint8 values as PIL's is.
  2. RandAugment from a timm string ('rand-m9-mstd0.5-inc1': 2 ops drawn with replacement
     from timm's 15 'increasing' ops, each applied with probability 0.5 at magnitude
     N(9, 0.5) clipped to [0, 10]; affine ops resample bicubically and fill with the
     ImageNet mean (124, 116, 104); each op rounds or truncates to uint8 as PIL does).
  3. ToTensor + Normalize, then RandomErasing (probability `reprob`, mode 'pixel': one
     box of area U(0.02, 1/3) and log-aspect U(log 0.3, log 1/0.3), first of 10 tries
     with h < H and w < W, filled with N(0, 1) noise in the normalised space).
timm skips colour jitter when RandAugment is on, so config.aug.color_jitter has no effect
here either (config_check refuses colour jitter without RandAugment).

Why on the device: the engine sends raw uint8 batches and augments inside the jitted step
(data/augment.py), with draws that are functions of (seed, member, step), so resumed and
parallel members see the same augmentation and no host worker pool is needed. Each op is a
vectorised formula of PIL's integer arithmetic (tests compare them with PIL).
"""

import math
import re

import jax
import jax.numpy as jnp

from enstransfer_jax.data import augment
from enstransfer_jax.errors import UserError

FILL = (124, 116, 104)  # timm: round(255 * IMAGENET_DEFAULT_MEAN)
OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
       'TranslateYRel')
_AFFINE = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
_POINT = tuple(op for op in OPS if op not in _AFFINE)


def parse(config_str):
  """{'n', 'm', 'mstd', 'p'} of a timm 'rand-...' string with inc1 (the only op set here)."""
  parts = str(config_str).split('-')
  if parts[0] != 'rand':
    raise UserError(f'auto_augment={config_str!r}: only RandAugment strings (rand-m9-mstd0.5-'
                    "inc1) or 'none' are supported")
  out = {'n': 2, 'm': 10.0, 'mstd': 0.0, 'p': 0.5, 'inc': 0}
  for part in parts[1:]:
    key_val = re.split(r'(\d.*)', part)
    if len(key_val) < 2 or key_val[0] not in ('n', 'm', 'mstd', 'p', 'inc'):
      raise UserError(f'auto_augment={config_str!r}: unknown section {part!r}; use n, m, mstd, '
                      'p, inc')
    out[key_val[0]] = float(key_val[1])
  if not out['inc']:
    raise UserError(f'auto_augment={config_str!r}: only the increasing op set (inc1) is '
                    'implemented; add -inc1')
  out['n'] = int(out['n'])
  return out


# ------------------------------------------------------------------ level -> argument

def level_args(op, magnitude, negate):
  """timm's level functions: the op's argument at `magnitude` (negate: the 50% sign)."""
  level = magnitude / 10.0
  sign = jnp.where(negate, -1.0, 1.0)
  if op == 'Rotate':
    return sign * level * 30.0
  if op in ('ShearX', 'ShearY'):
    return sign * level * 0.3
  if op in ('TranslateXRel', 'TranslateYRel'):
    return sign * level * 0.45
  if op.endswith('Increasing') and op[:-len('Increasing')] in ('Color', 'Contrast',
                                                                'Brightness', 'Sharpness'):
    return jnp.maximum(0.1, 1.0 + sign * level * 0.9)
  if op == 'PosterizeIncreasing':
    return 4 - jnp.floor(level * 4)
  if op == 'SolarizeIncreasing':
    return 256 - jnp.minimum(256, jnp.floor(level * 256))
  if op == 'SolarizeAdd':
    return jnp.minimum(128, jnp.floor(level * 110))
  return jnp.float32(0)


# ------------------------------------------------------------------ ops on [0, 255] floats

def _gray(x):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  return jnp.floor((19595 * r + 38470 * g + 7471 * b + 32768) / 65536)


def _blend(degenerate, x, factor):
  """PIL Image.blend(degenerate, x, factor): truncated, clipped to [0, 255]."""
  return jnp.clip(jnp.floor(degenerate + factor * (x - degenerate)), 0, 255)


def auto_contrast(x):
  lo = jnp.min(x, axis=(0, 1))
  hi = jnp.max(x, axis=(0, 1))
  scale = 255.0 / jnp.maximum(hi - lo, 1.0)
  out = jnp.clip(jnp.trunc(x * scale - lo * scale), 0, 255)
  return jnp.where(hi > lo, out, x)


def equalize(x):
  def channel(c):
    ci = c.astype(jnp.int32)
    hist = jnp.zeros(256, jnp.int32).at[ci.ravel()].add(1)
    last = jnp.max(jnp.where(hist > 0, jnp.arange(256), -1))
    step = (jnp.sum(hist) - hist[last]) // 255
    lut = (step // 2 + jnp.cumsum(hist) - hist) // jnp.maximum(step, 1)
    out = jnp.minimum(lut, 255)[ci].astype(c.dtype)
    return jnp.where(step > 0, out, c)
  return jnp.stack([channel(x[..., i]) for i in range(3)], -1)


def posterize(x, bits):
  q = 2.0 ** (8 - bits)
  return jnp.floor(x / q) * q


def solarize(x, thresh):
  return jnp.where(x >= thresh, 255 - x, x)


def solarize_add(x, add):
  return jnp.where(x < 128, jnp.minimum(255, x + add), x)


def color(x, factor):
  return _blend(jnp.broadcast_to(_gray(x)[..., None], x.shape), x, factor)


def contrast(x, factor):
  mean = jnp.floor(jnp.mean(_gray(x)) + 0.5)
  return _blend(jnp.full_like(x, mean), x, factor)


def brightness(x, factor):
  return _blend(jnp.zeros_like(x), x, factor)


def sharpness(x, factor):
  """PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1) / 13 inside, the border kept, then blend."""
  h, w, _ = x.shape
  p = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
  total = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4 * x
  smooth = jnp.clip(jnp.floor(total / 13.0 + 0.5), 0, 255)
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return _blend(jnp.where(inner, smooth, x), x, factor)


def _cubic(t, a=-1.0):  # PIL's geometric transforms (resize uses a = -0.5)
  t = jnp.abs(t)
  return jnp.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                   jnp.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))


def affine(x, matrix, fill=FILL):
  """PIL's Image.transform(AFFINE, matrix, BICUBIC, fillcolor): output pixel (i, j) reads
  the input at (a (j+.5) + b (i+.5) + c, d (j+.5) + e (i+.5) + f); points outside the
  image take `fill`; neighbours are clamped to the border; PIL's 8-bit transforms use the
  cubic with a = -1 and truncate to uint8."""
  h, w, _ = x.shape
  a, b, c, d, e, f = matrix
  jj, ii = jnp.meshgrid(jnp.arange(w) + 0.5, jnp.arange(h) + 0.5)
  u = a * jj + b * ii + c
  v = d * jj + e * ii + f
  outside = (u < 0) | (u >= w) | (v < 0) | (v >= h)
  u0, v0 = jnp.floor(u - 0.5), jnp.floor(v - 0.5)
  du, dv = u - 0.5 - u0, v - 0.5 - v0
  out = jnp.zeros(u.shape + (3,), jnp.float32)
  for m in range(-1, 3):
    wy = _cubic(dv - m)
    yi = jnp.clip(v0 + m, 0, h - 1).astype(jnp.int32)
    row = jnp.zeros(u.shape + (3,), jnp.float32)
    for n in range(-1, 3):
      xi = jnp.clip(u0 + n, 0, w - 1).astype(jnp.int32)
      row = row + _cubic(du - n)[..., None] * x[yi, xi]
    out = out + wy[..., None] * row
  out = jnp.clip(jnp.floor(out), 0, 255)
  return jnp.where(outside[..., None], jnp.asarray(fill, jnp.float32), out)


def affine_matrix(op, arg, height, width):
  """timm's matrices: shear (1, f, 0, 0, 1, 0) / (1, 0, 0, f, 1, 0), translate by arg x
  size, PIL's rotate about the centre (w / 2, h / 2)."""
  zero, one = jnp.float32(0), jnp.float32(1)
  if op == 'ShearX':
    return (one, arg, zero, zero, one, zero)
  if op == 'ShearY':
    return (one, zero, zero, arg, one, zero)
  if op == 'TranslateXRel':
    return (one, zero, arg * width, zero, one, zero)
  if op == 'TranslateYRel':
    return (one, zero, zero, zero, one, arg * height)
  angle = -jnp.deg2rad(arg)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2.0, height / 2.0
  return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def apply_op(op, x, magnitude, negate):
  """One named op at a given magnitude and sign on a [0, 255] float image [H, W, 3]."""
  arg = level_args(op, magnitude, negate)
  h, w, _ = x.shape
  if op in _AFFINE:
    return affine(x, affine_matrix(op, arg, h, w))
  return {'AutoContrast': lambda: auto_contrast(x), 'Equalize': lambda: equalize(x),
          'Invert': lambda: 255.0 - x, 'PosterizeIncreasing': lambda: posterize(x, arg),
          'SolarizeIncreasing': lambda: solarize(x, arg),
          'SolarizeAdd': lambda: solarize_add(x, arg),
          'ColorIncreasing': lambda: color(x, arg),
          'ContrastIncreasing': lambda: contrast(x, arg),
          'BrightnessIncreasing': lambda: brightness(x, arg),
          'SharpnessIncreasing': lambda: sharpness(x, arg)}[op]()


def rand_augment(key, x, spec):
  """spec['n'] random ops of OPS on one [0, 255] image (see the module docstring)."""
  for layer in range(spec['n']):
    k_op, k_apply, k_mag, k_sign = jax.random.split(jax.random.fold_in(key, layer), 4)
    index = jax.random.randint(k_op, (), 0, len(OPS))
    magnitude = spec['m'] + spec['mstd'] * jax.random.normal(k_mag)
    magnitude = jnp.clip(magnitude, 0.0, 10.0)
    negate = jax.random.uniform(k_sign) > 0.5
    # The five affine ops share one resampling: their matrix is picked, then applied once.
    h, w, _ = x.shape
    matrices = jnp.asarray([affine_matrix(op, level_args(op, magnitude, negate), h, w)
                            for op in _AFFINE])
    slot = jnp.asarray([_AFFINE.index(op) if op in _AFFINE else 0 for op in OPS])[index]
    moved = affine(x, tuple(matrices[slot]))
    point = jnp.asarray([_POINT.index(op) if op in _POINT else 0 for op in OPS])[index]
    branches = [lambda y, op=op: apply_op(op, y, magnitude, negate) for op in _POINT]
    out = jnp.where(jnp.isin(index, jnp.asarray([OPS.index(op) for op in _AFFINE])), moved,
                    jax.lax.switch(point, branches, x))
    x = jnp.where(jax.random.uniform(k_apply) <= spec['p'], out, x)
  return x


def random_erasing(key, x, probability):
  """timm's RandomErasing(mode='pixel', max_count=1) on one normalised image [H, W, 3]."""
  h, w, _ = x.shape
  k_p, k_area, k_ratio, k_top, k_left, k_noise = jax.random.split(key, 6)
  area = jax.random.uniform(k_area, (10,), minval=0.02, maxval=1 / 3) * h * w
  ratio = jnp.exp(jax.random.uniform(k_ratio, (10,), minval=math.log(0.3),
                                     maxval=math.log(1 / 0.3)))
  eh = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  valid = (ew < w) & (eh < h)
  first = jnp.argmax(valid)
  eh, ew = eh[first], ew[first]
  top = jnp.floor(jax.random.uniform(k_top) * (h - eh + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left) * (w - ew + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  erase = box & jnp.any(valid) & (jax.random.uniform(k_p) <= probability)
  return jnp.where(erase[..., None], jax.random.normal(k_noise, x.shape), x)


def _crop(key, images, image_size, interpolation):
  """Step 1 of the module docstring: [B, S, S, 3] floats with uint8 values."""
  batch, height, width, _ = images.shape
  if image_size > 32:
    params = augment.sample_train_params(key, batch, height, width, transform='imagenet',
                                         image_size=image_size)
    x = images.astype(jnp.float32)

    def one(image, box, flip):
      wy = augment.resize_weights(image_size, height, box[0], box[2], interpolation)
      wx = augment.resize_weights(image_size, width, box[1], box[3], interpolation)
      return augment._resample(image, wy, jnp.where(flip, wx[::-1], wx))  # pylint: disable=protected-access

    out = jax.vmap(one)(x, params['box'], params['flip'])
    return jnp.clip(jnp.floor(out + 0.5), 0, 255)
  params = augment.sample_train_params(key, batch, height, width, transform='cifar',
                                       image_size=image_size)
  p = augment.CIFAR_PADDING
  padded = jnp.pad(images.astype(jnp.float32), ((0, 0), (p, p), (p, p), (0, 0)))

  def crop(image, box, flip):
    out = jax.lax.dynamic_slice(image, (box[0], box[1], 0), (image_size, image_size, 3))
    return jnp.where(flip, out[:, ::-1], out)

  return jax.vmap(crop)(padded, params['box'], params['flip'])


def swin_train_transform(rng, images, *, image_size, interpolation='bicubic',
                         auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, remode='pixel',
                         recount=1):
  """uint8 [B, H, W, 3] -> augmented, normalised float32 [B, S, S, 3] (module docstring)."""
  if remode != 'pixel' or int(recount) != 1:
    raise UserError(f'random erasing remode={remode!r} recount={recount}: only pixel mode '
                    'with one box is implemented')
  k_crop, k_ra, k_re = jax.random.split(rng, 3)
  x = _crop(k_crop, images, image_size, interpolation)
  keys = jax.random.split(k_ra, x.shape[0])
  if str(auto_augment).lower() != 'none':
    spec = parse(auto_augment)
    x = jax.vmap(lambda k, y: rand_augment(k, y, spec))(keys, x)
  x = augment.normalize(x / 255.0)
  if reprob > 0:
    keys = jax.random.split(k_re, x.shape[0])
    x = jax.vmap(lambda k, y: random_erasing(k, y, reprob))(keys, x)
  return x
