"""Tests of data/host_pipeline.py: train crops cut from the whole image on the host.

References: torchvision's RandomResizedCrop.get_params written out below as its source loops
(same uniforms, try by try), PIL's antialiased resize of the decoded crop (what torchvision's
resized_crop of an image computes), PIL's decode of the whole JPEG (the crop-only decode must
give its pixels), and the padded batch layout of batches.padded_indices.
"""

import io
import math

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from enstransfer_jax.data import batches
from enstransfer_jax.data import datasets
from enstransfer_jax.data import host_pipeline as hp

TRIES = 10


def _torchvision_get_params(height, width, u_area, u_ratio, u_top, u_left,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision.transforms.RandomResizedCrop.get_params, uniform draws given."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for t in range(TRIES):
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area[t])
    aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio[t])
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = int(u_top * (height - h + 1))  # torch.randint(0, height - h + 1)
      j = int(u_left * (width - w + 1))
      return i, j, h, w
  in_ratio = float(width) / float(height)  # fallback to central crop
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w = width
    h = height
  return (height - h) // 2, (width - w) // 2, h, w


def test_crop_boxes_equal_torchvision_get_params():
  rng = np.random.default_rng(0)
  sizes = [(1, 1), (2, 2), (1, 500), (500, 1), (1000, 10), (10, 1000), (13, 700), (224, 224),
           (375, 500), (500, 375), (3, 4), (800, 600)]
  sizes += [tuple(s) for s in rng.integers(1, 900, size=(300, 2))]
  sizes = sizes * 4
  heights, widths = np.array(sizes).T
  u = rng.random((len(sizes), 2 * TRIES + 2))
  got = hp.crop_boxes(u[:, :TRIES], u[:, TRIES:2 * TRIES], u[:, -2], u[:, -1], heights, widths)
  want = [_torchvision_get_params(int(h), int(w), r[:TRIES], r[TRIES:2 * TRIES], r[-2], r[-1])
          for h, w, r in zip(heights, widths, u)]
  np.testing.assert_array_equal(got, np.array(want))
  # Every path of get_params is exercised: a later try, the fallbacks of both elongations.
  assert (got[:, 2] <= heights).all() and (got[:, 0] + got[:, 2] <= heights).all()
  assert (got[:, 1] + got[:, 3] <= widths).all() and (got[:, 3] >= 1).all()
  fallback = [i for i, (h, w) in enumerate(sizes) if (h, w) in ((1000, 10), (10, 1000))]
  np.testing.assert_array_equal(got[fallback[:2]], [[493, 0, 13, 10], [0, 493, 10, 13]])


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')  # lossless: the decoded pixels are `image`
  return buf.getvalue()


def _pil_resized_crop(image, box, size, interpolation='bilinear'):
  """torchvision's resized_crop of an image: PIL crop + antialiased resize (float, per channel)."""
  top, left, h, w = (int(v) for v in box)
  method = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interpolation]
  crop = image[top:top + h, left:left + w]
  out = [np.asarray(Image.fromarray(crop[..., c].astype(np.float32), mode='F').resize(
      (size, size), method)) for c in range(3)]
  return np.clip(np.round(np.stack(out, -1)), 0, 255)


def _smooth_image(rng, h, w):
  y, x = np.mgrid[0:h, 0:w]
  base = 128 + 100 * np.sin(x[..., None] / (3 + 5 * rng.random(3)) + y[..., None] / 7.0)
  return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_decode_crop_resize_equals_pil_resized_crop(interpolation):
  rng = np.random.default_rng(1)
  image = _smooth_image(rng, 61, 90)
  for box in [(0, 0, 61, 90), (5, 30, 40, 55), (50, 80, 11, 10), (0, 0, 8, 9), (3, 4, 57, 33)]:
    got = hp.decode_crop_resize(_png(image), np.array(box), 24, interpolation).numpy()
    assert got.dtype == np.uint8 and got.shape == (24, 24, 3)
    want = _pil_resized_crop(image, box, 24, interpolation)
    assert np.abs(got.astype(float) - want).max() <= 1, box  # float rounding at .5


def _jpeg(image, **kwargs):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90, **kwargs)
  return buf.getvalue()


@pytest.mark.parametrize('kwargs', [{}, {'subsampling': 0}, {'progressive': True}],
                         ids=['420', '444', 'progressive'])
def test_jpeg_crop_decode_equals_the_full_decode_crop(kwargs):
  """Only the box is decoded, and its pixels are the full decode's (PIL's decoder, the
  reference's); the output is PIL's resize of that crop to its float rounding."""
  rng = np.random.default_rng(4)
  encoded = _jpeg(_smooth_image(rng, 75, 101), **kwargs)
  full = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'))
  boxes = [(0, 0, 75, 101), (5, 3, 40, 55), (17, 9, 58, 92), (1, 1, 1, 1), (70, 95, 5, 6),
           (33, 47, 21, 13), (8, 16, 16, 16)]  # off and on the 8 / 16 px block grid, edges
  for box in boxes:
    top, left, h, w = box
    crop = hp.decode_crop(encoded, np.array(box)).numpy()
    np.testing.assert_array_equal(crop, full[top:top + h, left:left + w], err_msg=str(box))
    got = hp.decode_crop_resize(encoded, np.array(box), 24).numpy()
    assert got.dtype == np.uint8 and got.shape == (24, 24, 3)
    assert np.abs(got.astype(float) - _pil_resized_crop(full, box, 24)).max() <= 1, box


def test_reduced_scale_decode_is_pil_draft_and_near_the_full_decode():
  """reduce=True: a box at least 2 / 4 x the output decodes at 1/2 / 1/4 scale; the output is
  PIL's resize of that region of PIL's reduced-scale decode (Image.draft: libjpeg's DCT-domain
  scaling), within a bound of the full decode's; smaller boxes as without reduce."""
  for kwargs in ({}, {'subsampling': 0}):
    encoded = _jpeg(_smooth_image(np.random.default_rng(4), 75, 101), **kwargs)
    full = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'))
    for box, ratio in [((0, 0, 75, 101), 4), ((1, 2, 70, 66), 4), ((5, 3, 40, 55), 2),
                       ((17, 9, 58, 92), 2), ((33, 47, 21, 13), 1)]:
      top, left, h, w = box
      assert hp.reduced_ratio(h, w, 16) == ratio
      got = hp.decode_crop_resize(encoded, np.array(box), 16, reduce=True).numpy()
      if ratio == 1:
        np.testing.assert_array_equal(got, hp.decode_crop_resize(encoded, np.array(box), 16))
        continue
      small = Image.open(io.BytesIO(encoded))
      small.draft('RGB', (101 // ratio, 75 // ratio))
      region = (left / ratio, top / ratio, (left + w) / ratio, (top + h) / ratio)
      want = small.convert('RGB').resize((16, 16), Image.BILINEAR, box=region)
      np.testing.assert_array_equal(got, np.asarray(want), err_msg=str(box))
      diff = np.abs(got - _pil_resized_crop(full, box, 16))  # measured: max 16, mean 2.6
      assert diff.max() <= 20 and diff.mean() <= 3, (box, diff.max(), diff.mean())


def _encoded(rng, sizes):
  raw = [_smooth_image(rng, h, w) for h, w in sizes]
  data = np.empty(len(raw), object)
  data[:] = [_png(r) for r in raw]
  return raw, hp.EncodedImages(data, np.array([h for h, _ in sizes], np.int32),
                               np.array([w for _, w in sizes], np.int32))


def test_epoch_batches_padded_deterministic_and_resumable():
  rng = np.random.default_rng(2)
  sizes = [(40, 120), (120, 40), (33, 33), (64, 48), (20, 90), (75, 60), (9, 12), (50, 51),
           (100, 30), (28, 28)]  # batches of 4: the last holds 2 and 2 padding rows
  raw, images = _encoded(rng, sizes)
  seed, members, epoch, size, batch = 7, [1, 3], 2, 16, 4
  n = len(sizes)
  orders = [batches.epoch_order(seed, m, epoch, n) for m in members]
  feed = hp.HostCrops(images, size, workers=2)
  whole = list(feed.epoch(seed, members, epoch, orders, batch))
  assert len(whole) == 3 and all(b.shape == (2, batch, size, size, 3) for b in whole)
  # Batch b, member j, row r: the image of padded_indices' index, cut by the member's epoch box
  # (drawn from the documented stream: default_rng([seed, 5, member, epoch])).
  for j, m in enumerate(members):
    u = np.random.default_rng([seed, 5, m, epoch]).random((n, 2 * TRIES + 2))
    for b, (lo, hi) in enumerate(batches.batch_slices(n, batch)):
      idx, mask = batches.padded_indices(orders, lo, hi, batch)
      for r in range(batch):
        p = lo + r if mask[j, r] else lo  # padding repeats the slice's first row
        assert idx[j, r] == orders[j][p]
        h, w = sizes[orders[j][p]]
        box = _torchvision_get_params(h, w, u[p, :TRIES], u[p, TRIES:2 * TRIES], u[p, -2],
                                      u[p, -1])
        want = _pil_resized_crop(raw[orders[j][p]], box, size)
        assert np.abs(whole[b][j, r].astype(float) - want).max() <= 1, (m, b, r)
  again = list(feed.epoch(seed, members, epoch, orders, batch))
  for a, b in zip(whole, again):
    np.testing.assert_array_equal(a, b)
  resumed = list(feed.epoch(seed, members, epoch, orders, batch, first_batch=1))
  assert len(resumed) == 2
  for a, b in zip(whole[1:], resumed):
    np.testing.assert_array_equal(a, b)
  later = list(feed.epoch(seed, members, epoch + 1, orders, batch))
  assert not np.array_equal(whole[0], later[0])  # new boxes every epoch


def test_boxes_reach_beyond_the_central_square():
  _, images = _encoded(np.random.default_rng(3), [(40, 160)])
  boxes = np.concatenate([hp.epoch_boxes(images, 0, 1, e, np.array([0])) for e in range(200)])
  left, right = boxes[:, 1], boxes[:, 1] + boxes[:, 3]
  assert (left < 60).mean() > 0.3 and (right > 100).mean() > 0.3  # square: columns 60..100
  assert (boxes[:, 3] > 40).any()  # wider than the square


def test_load_dataset_keeps_whole_encoded_train_images_for_imagenet():
  config = ml_collections.ConfigDict(dict(dataset='dtd', data_dir='', use_test=True,
                                          class_subset=(), transform_name='imagenet',
                                          train_per_class=0))
  with tfds.testing.mock_data(num_examples=4):
    raw = list(tfds.as_numpy(tfds.load('dtd', split='train+validation', shuffle_files=False)))
    splits = datasets.load_dataset(config, load_size=16)
    config.transform_name = 'cifar'
    plain = datasets.load_dataset(config, load_size=16)
  enc = splits.train_encoded
  assert plain.train_encoded is None and len(enc.data) == len(splits.train_labels) == len(raw)
  # No second copy: the 16 x 16 evaluation images decode when read, equal to those decoded
  # on load by the other transforms.
  assert isinstance(splits.train_images, hp.DecodedImages)
  assert splits.train_images.nbytes == enc.nbytes and splits.train_images.shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(splits.train_images, plain.train_images)
  np.testing.assert_array_equal(splits.train_images[[3, 0, 3]], plain.train_images[[3, 0, 3]])
  np.testing.assert_array_equal(splits.train_images[1], plain.train_images[1])
  np.testing.assert_array_equal(splits.train_images[1:3, 0], plain.train_images[1:3, 0])
  for ex, data, h, w, label in zip(raw, enc.data, enc.heights, enc.widths, splits.train_labels):
    assert (h, w) == ex['image'].shape[:2] and label == ex['label']
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')),
                                  ex['image'])


def _dtd_run(workdir, monkeypatch, signal_at=0, seen=None):
  """A tiny StarSSE run on mocked dtd with host crops; signal_at: SIGTERM at that step."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from tests import engine_util  # pylint: disable=g-import-not-at-top
  real, calls = step_lib.make_train_step, [0]

  def make(spec, tx):
    step = real(spec, tx)

    def wrapped(state, batch, aux):
      calls[0] += 1
      if seen is not None:
        seen.append((spec.train_transform, np.asarray(batch['images'])))
      if calls[0] == signal_at:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, batch, aux)
    return wrapped

  monkeypatch.setattr(step_lib, 'make_train_step', make)
  config = engine_util.tiny_config(
      dataset='dtd', transform_name='imagenet', image_size=16, batch_size=3,
      eval_batch_size=8, num_fge=2, star_fge=True, epochs=2, fge_epochs=1, seed=1,
      checkpoint_every_steps=1)
  with tfds.testing.mock_data(num_examples=4):  # train+validation: 4 images, batches 3 + 1
    run_experiment(config, workdir)
  monkeypatch.setattr(step_lib, 'make_train_step', real)
  return config


def test_engine_trains_on_host_crops_and_resumes_exactly(tmp_path, monkeypatch):
  from enstransfer_jax.training import resume  # pylint: disable=g-import-not-at-top
  seen = []
  config = _dtd_run(str(tmp_path / 'whole'), monkeypatch, seen=seen)
  with tfds.testing.mock_data(num_examples=4):
    data = datasets.load_dataset(config)
  n = len(data.train_labels)
  assert data.train_encoded is not None and n == 4
  # The step gets 16 px crops of the whole images (the host pipeline's), flips and normalises.
  orders = [batches.epoch_order(config.seed, 1, 1, n)]
  want = next(hp.HostCrops(data.train_encoded, 16).epoch(config.seed, [1], 1, orders, 3))
  assert seen[0][0] == 'host_crop'
  np.testing.assert_array_equal(seen[0][1], want)
  # Stopped after member 1's third step (epoch 2, batch 1; epoch 1 ended with a padded
  # batch), then run again.
  with pytest.raises(resume.Interrupted):
    _dtd_run(str(tmp_path / 'cut'), monkeypatch, signal_at=3)
  _dtd_run(str(tmp_path / 'cut'), monkeypatch)
  for i in (1, 2):
    whole, cut = (np.load(str(tmp_path / d / 'members' / str(i) / 'test_probs.npy'))
                  for d in ('whole', 'cut'))
    np.testing.assert_array_equal(whole, cut)
