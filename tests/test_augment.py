"""Tests of enstransfer_jax.data.augment against PIL, numpy and a pure-Python torchvision port.

PIL resizes float ('F' mode) single-channel images with the same filters torchvision applies to
tensors with antialias=True (and, when upscaling, plain half-pixel bilinear); PIL works in double
precision and the JAX code in float32 with up to ~300-term sums, hence atol 2e-4 after
normalisation (1/255 / 0.225 = 0.017 is one grey level).
"""

import functools
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from enstransfer_jax.data import augment

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
ATOL = 2e-4


def _jit(fn, **static):
  """fn with its keyword arguments bound, under jax.jit (eager vmap is slow)."""
  return jax.jit(functools.partial(fn, **static))


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pil_resize(image01, size_wh, method=Image.BILINEAR):
  channels = [Image.fromarray(np.ascontiguousarray(image01[..., c], np.float32), mode='F')
              for c in range(3)]
  return np.stack([np.asarray(ch.resize(size_wh, method), np.float64) for ch in channels], -1)


def _norm(x01):
  return (x01 - MEAN) / STD


@pytest.mark.parametrize('height,width,interp', [(32, 32, 'bilinear'), (300, 260, 'bilinear'),
                                                 (40, 32, 'bicubic')])
def test_imagenet_eval_matches_pil_resize_256_center_crop_224(height, width, interp):
  images = _images((2, height, width, 3))
  out = np.asarray(_jit(augment.eval_transform, transform='imagenet', image_size=224,
                        interpolation=interp)(jnp.asarray(images)))
  assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
  short, long_ = min(height, width), max(height, width)
  new_long = int(256 * long_ / short)
  new_h, new_w = (256, new_long) if height <= width else (new_long, 256)
  top, left = round((new_h - 224) / 2), round((new_w - 224) / 2)
  method = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interp]
  for b in range(2):
    ref = _pil_resize(images[b] / 255.0, (new_w, new_h), method)[top:top + 224, left:left + 224]
    np.testing.assert_allclose(out[b], _norm(ref), atol=ATOL)


def test_eval_resize_size_scales_with_image_size():
  assert augment.eval_resize_size(224) == 256
  assert augment.eval_resize_size(112) == 128


def test_imagenet_train_equals_pil_crop_resize_flip_of_sampled_box():
  # Crops of 48x40 images resized to 24: both upscaling (small boxes) and antialiased downscaling.
  height, width, size = 48, 40, 24
  images = _images((8, height, width, 3), seed=1)
  rng = jax.random.PRNGKey(3)
  out = np.asarray(_jit(augment.train_transform, transform='imagenet', image_size=size)(
      rng, jnp.asarray(images)))
  params = _jit(augment.sample_train_params, batch=8, height=height, width=width,
                transform='imagenet', image_size=size)(rng)
  boxes = np.asarray(params['box'])
  assert (boxes[:, 2:] < size).any() and (boxes[:, 2:] > size).any()
  for b in range(8):
    top, left, h, w = (int(v) for v in params['box'][b])
    crop = images[b, top:top + h, left:left + w] / 255.0
    ref = _pil_resize(crop, (size, size))
    if params['flip'][b]:
      ref = ref[:, ::-1]
    np.testing.assert_allclose(out[b], _norm(ref), atol=ATOL)


def _torchvision_get_params(rnd, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """RandomResizedCrop.get_params of torchvision, ported to Python's random module."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rnd.uniform(*scale)
    aspect = math.exp(rnd.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize('height,width', [(32, 32), (50, 20)])
def test_crop_boxes_obey_bounds_and_match_torchvision_distribution(height, width):
  n = 4000
  boxes = np.asarray(_jit(augment.sample_crop_boxes, batch=n, height=height, width=width)(
      jax.random.PRNGKey(0))).astype(np.float64)
  top, left, h, w = boxes.T
  assert (h >= 1).all() and (w >= 1).all()
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  # Rounded from sqrt(area * r), sqrt(area / r) with area in [0.08, 1] HW, r in [3/4, 4/3]:
  fallback = (h == height) & (w == width) if width / height >= 0.75 else (w == width)
  s = ~fallback
  assert ((w[s] + 0.5) * (h[s] + 0.5) >= 0.08 * height * width).all()
  assert ((w[s] - 0.5) * (h[s] - 0.5) <= height * width).all()
  assert ((w[s] + 0.5) / (h[s] - 0.5) >= 0.75).all()
  assert ((w[s] - 0.5) / (h[s] + 0.5) <= 4 / 3).all()
  # Same distribution as torchvision's loop: means within 5 standard errors.
  rnd = random.Random(0)
  ref = np.array([_torchvision_get_params(rnd, height, width) for _ in range(n)], np.float64)
  for stat in (lambda b: b[:, 2] * b[:, 3] / (height * width), lambda b: np.log(b[:, 3] / b[:, 2]),
               lambda b: b[:, 0], lambda b: b[:, 1]):
    a, r = stat(boxes), stat(ref)
    se = math.sqrt(a.var() / n + r.var() / n) + 1e-9
    assert abs(a.mean() - r.mean()) < 5 * se


def test_cifar_train_is_numpy_pad_crop_flip():
  n = 1024
  images = _images((n, 32, 32, 3), seed=2)
  rng = jax.random.PRNGKey(7)
  out = np.asarray(_jit(augment.train_transform, transform='cifar', image_size=32)(
      rng, jnp.asarray(images)))
  params = _jit(augment.sample_train_params, batch=n, height=32, width=32, transform='cifar',
                image_size=32)(rng)
  padded = np.pad(images / 255.0, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for b in range(n):
    top, left = int(params['box'][b, 0]), int(params['box'][b, 1])
    ref = padded[b, top:top + 32, left:left + 32]
    if params['flip'][b]:
      ref = ref[:, ::-1]
    np.testing.assert_allclose(out[b], _norm(ref), atol=1e-5)
  offsets = np.asarray(params['box'][:, :2])
  assert offsets.min() == 0 and offsets.max() == 8  # RandomCrop(32, padding=4): offsets 0..8
  assert abs(float(np.mean(params['flip'])) - 0.5) < 4 * 0.5 / math.sqrt(n)  # flip p = 0.5


def test_normalisation_constants_and_none_transform():
  images = np.zeros((1, 8, 8, 3), np.uint8)
  images[0, 0, 0] = 255
  for out in (augment.eval_transform(jnp.asarray(images), transform='none', image_size=8),
              augment.eval_transform(jnp.asarray(images), transform='cifar', image_size=8),
              augment.train_transform(jax.random.PRNGKey(0), jnp.asarray(images),
                                      transform='none', image_size=8)):
    out = np.asarray(out)
    np.testing.assert_allclose(out[0, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                              (1 - 0.406) / 0.225], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-6)


def test_none_transform_resizes_to_image_size():
  images = _images((1, 16, 16, 3))
  out = np.asarray(augment.eval_transform(jnp.asarray(images), transform='none', image_size=40))
  np.testing.assert_allclose(out[0], _norm(_pil_resize(images[0] / 255.0, (40, 40))), atol=ATOL)


def test_vmap_over_members_under_jit_equals_separate_calls():
  images = jnp.asarray(_images((3, 32, 32, 3)))
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  fn = lambda k: augment.train_transform(k, images, transform='imagenet', image_size=16)
  together = np.asarray(jax.jit(jax.vmap(fn))(keys))
  for m in range(2):
    np.testing.assert_allclose(together[m], np.asarray(jax.jit(fn)(keys[m])), atol=1e-5)
  assert not np.allclose(together[0], together[1])


def test_bad_arguments_raise_value_error():
  images = jnp.asarray(_images((1, 8, 8, 3)))
  with pytest.raises(ValueError, match='unknown transform'):
    augment.eval_transform(images, transform='swin', image_size=8)
  with pytest.raises(ValueError, match='unknown interpolation'):
    augment.eval_transform(images, transform='imagenet', image_size=8, interpolation='lanczos')
  with pytest.raises(ValueError, match='uint8'):
    augment.eval_transform(images.astype(jnp.float32), transform='none', image_size=8)
  with pytest.raises(ValueError, match='image_size'):
    augment.train_transform(jax.random.PRNGKey(0), images, transform='cifar', image_size=32)
