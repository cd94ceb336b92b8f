"""Train crops from the whole image on the host, for datasets whose images vary in size.

The reference (torchvision) applies RandomResizedCrop(224) to each whole decoded PIL image.
Here the encoded training images stay in host memory (`EncodedImages`, the bytes TFDS stores)
and every epoch a tf.data pipeline decodes only each crop box and resizes it to
image_size x image_size with PIL's own uint8 resize (antialiased bilinear or bicubic: the
arithmetic torchvision's resized_crop runs on a PIL image). The device then flips and
normalises (augment.HOST_CROP).

Decoding only the box: JPEGs go through tf.io.decode_and_crop_jpeg, which skips the inverse
DCT and colour conversion of the columns outside the box and stops after its last row; its
pixels are those of the whole decoded image's crop (the box is widened by one 16 px iMCU on
each side and cut after decoding, so the chroma upsampling at its edges sees the same
neighbours as in the full decode), with the accurate integer IDCT as PIL decodes: the crop
equals PIL's whole decode's, pixel for pixel (TF's default fast IDCT, used before, was up to 5
levels off). Other formats (PNG) are decoded whole and cut. Reduced-scale (DCT-domain 1/2, 1/4,
1/8) decoding of boxes at least 2, 4, 8 x the output is an option (HostCrops(reduce=True)), off
by default: its pixels are not those of the full decode (about 1 level on average, up to about
13, on 224 px crops of photo-sized JPEGs), and it saves little, since it applies to few boxes at
224 px and the entropy decoding of every row above the box's bottom, which no method skips, is
most of a decode's cost (BENCHMARKS.md). The parallel map runs on tf.data's C++ thread pool
(`workers` threads); decoding holds no Python lock and PIL releases it while it resamples.

Crop boxes are drawn as torchvision's RandomResizedCrop.get_params (scale (0.08, 1), ratio
(3/4, 4/3), 10 tries of (area, log-ratio), the first box that fits wins, else the central crop
with the ratio clamped), each image with its own size. The box of the example at position p of
member m's epoch-e order is row p of a table drawn from streams.numpy_rng(seed, 'crop', m, e)
(enstransfer_jax/streams.py), so an epoch's batches are a pure function of (seed, member, epoch) and a run resumed at
batch b of an epoch sees exactly the batches an uninterrupted run would. An epoch's last,
partial batch is padded as batches.padded_indices pads it: with copies of its first row.
"""

import dataclasses
import math
import os

import numpy as np

from enstransfer_jax import streams
from enstransfer_jax.data import batches
from enstransfer_jax.errors import UserError

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10
INTERPOLATIONS = ('bilinear', 'bicubic')


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedImages:
  """The encoded (JPEG / PNG) training images and their decoded sizes."""
  data: np.ndarray  # object [N]: bytes of each image as stored
  heights: np.ndarray  # int32 [N]
  widths: np.ndarray  # int32 [N]

  def take(self, idx):
    return EncodedImages(self.data[idx], self.heights[idx], self.widths[idx])

  @property
  def nbytes(self):
    """Host memory held by the encoded bytes."""
    return int(sum(len(b) for b in self.data)) + self.heights.nbytes + self.widths.nbytes


def center_resize(image, load_size):
  """TF: a decoded uint8 image -> uint8 [load_size, load_size, 3], the evaluation copy:
  shorter side resized to load_size (longer side truncated, as torch), antialiased bilinear,
  then the central square (offsets rounded)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  new = tf.cast(shape * (load_size / tf.reduce_min(shape)), tf.int32)  # truncated, as torch
  new = tf.maximum(new, load_size)
  image = tf.image.resize(image, new, method='bilinear', antialias=True)
  top = tf.cast(tf.round(tf.cast(new[0] - load_size, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(new[1] - load_size, tf.float32) / 2), tf.int32)
  image = image[top:top + load_size, left:left + load_size]
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


class DecodedImages:
  """uint8 [N, S, S, 3], read like an array, decoded on the fly from EncodedImages: the
  evaluation copies (center_resize) of a training split that keeps only its encoded images.
  Indexing (an int, a slice, an index array) decodes those images on tf.data's threads;
  np.asarray decodes them all."""

  def __init__(self, encoded, load_size):
    self.encoded = encoded
    self.load_size = int(load_size)
    self.shape = (len(encoded.data), self.load_size, self.load_size, 3)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4

  def __len__(self):
    return self.shape[0]

  @property
  def nbytes(self):
    """Host memory held: the encoded bytes only."""
    return self.encoded.nbytes

  def _decode(self, idx):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    data, size = self.encoded.data, self.load_size
    if not len(idx):
      return np.zeros((0, size, size, 3), np.uint8)

    def load(i):
      encoded = tf.numpy_function(lambda j: data[j], [i], tf.string, stateful=False)
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      return tf.ensure_shape(center_resize(image, size), (size, size, 3))
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(idx, np.int64))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.concatenate(list(ds.batch(256).as_numpy_iterator()))

  def __getitem__(self, key):
    if isinstance(key, tuple):  # e.g. images[:, 0, 0, 0]: decode the rows, index the rest
      return self[key[0]][(slice(None),) + key[1:]]
    idx = np.arange(len(self))[key]
    if np.ndim(idx) == 0:
      return self._decode([int(idx)])[0]
    return self._decode(idx.reshape(-1)).reshape(idx.shape + self.shape[1:])

  def __iter__(self):
    for lo in range(0, len(self), 256):
      yield from self[lo:lo + 256]

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[:]
    return out if dtype is None else out.astype(dtype)


def crop_boxes(u_area, u_ratio, u_top, u_left, heights, widths, scale=SCALE, ratio=RATIO):
  """int64 [N, 4] = (top, left, h, w) from uniforms in [0, 1): u_area, u_ratio [N, tries]
  (try t uses column t), u_top, u_left [N]; heights, widths [N] the images' sizes.

  torchvision's get_params: area = H W uniform(scale), aspect = exp(uniform(log ratio)),
  w = round(sqrt(area aspect)), h = round(sqrt(area / aspect)); the first try with
  0 < w <= W and 0 < h <= H is taken, top uniform in 0..H-h and left in 0..W-w; when none
  fits, the central crop of the whole image with its ratio clamped to `ratio`."""
  height = np.asarray(heights, np.float64)[:, None]
  width = np.asarray(widths, np.float64)[:, None]
  target = height * width * (scale[0] + (scale[1] - scale[0]) * np.asarray(u_area))
  lo, hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = np.exp(lo + (hi - lo) * np.asarray(u_ratio))
  w = np.round(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, as Python
  h = np.round(np.sqrt(target / aspect)).astype(np.int64)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  found = valid.any(axis=1)
  first = np.argmax(valid, axis=1)
  rows = np.arange(len(first))
  h, w = h[rows, first], w[rows, first]
  height, width = height[:, 0].astype(np.int64), width[:, 0].astype(np.int64)
  in_ratio = width / height
  fw = np.where(in_ratio < min(ratio), width,
                np.where(in_ratio > max(ratio), np.round(height * max(ratio)), width))
  fh = np.where(in_ratio < min(ratio), np.round(width / min(ratio)), height)
  fw, fh = fw.astype(np.int64), fh.astype(np.int64)
  h, w = np.where(found, h, fh), np.where(found, w, fw)
  # torch.randint(0, n + 1): uniform on 0..n.
  top = np.minimum(np.floor(np.asarray(u_top) * (height - h + 1)).astype(np.int64), height - h)
  left = np.minimum(np.floor(np.asarray(u_left) * (width - w + 1)).astype(np.int64), width - w)
  top = np.where(found, top, (height - h) // 2)
  left = np.where(found, left, (width - w) // 2)
  return np.stack([top, left, h, w], axis=1)


def draw_crop_boxes(rng, heights, widths):
  """crop_boxes with the uniforms drawn from the numpy Generator `rng`."""
  n = len(heights)
  u = rng.random((n, 2 * TRIES + 2))
  return crop_boxes(u[:, :TRIES], u[:, TRIES:2 * TRIES], u[:, -2], u[:, -1], heights, widths)


def epoch_boxes(images, seed, member, epoch, order):
  """[N, 4] boxes of member's epoch: row p is the box of example order[p]."""
  rng = streams.numpy_rng(seed, 'crop', member, epoch)
  return draw_crop_boxes(rng, images.heights[order], images.widths[order])


_MARGIN = 16  # px decoded around a JPEG crop box: the largest iMCU (4:2:0 sampling)
_PIL_METHODS = {'bilinear': 2, 'bicubic': 3}  # PIL.Image.BILINEAR, PIL.Image.BICUBIC


def _jpeg_window(encoded, box, ratio=1):
  """TF: the box grown by one 16 px iMCU on each side (within the image), decoded at scale
  1/ratio with libjpeg's accurate integer IDCT (as PIL decodes; TF's default is the fast one),
  and the box's (left, top, right, bottom) in its pixels. The chroma upsampling at the box's
  edges then sees the neighbours the full decode sees."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = tf.io.extract_jpeg_shape(encoded)[:2]
  lo = tf.maximum(box[:2] - _MARGIN, 0) // ratio
  hi = -(-tf.minimum(box[:2] + box[2:] + _MARGIN, shape) // ratio)
  wide = tf.io.decode_and_crop_jpeg(encoded, tf.concat([lo, hi - lo], 0), channels=3,
                                    ratio=ratio, dct_method='INTEGER_ACCURATE')
  start = tf.cast(box[:2], tf.float32) / ratio - tf.cast(lo, tf.float32)
  end = start + tf.cast(box[2:], tf.float32) / ratio
  return wide, tf.stack([start[1], start[0], end[1], end[0]])


def decode_crop(encoded, box):
  """TF: encoded image bytes, int box (top, left, h, w) -> uint8 [h, w, 3], the box of the
  decoded image; a JPEG decodes only the box (decode_and_crop_jpeg)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  box = tf.cast(box, tf.int32)

  def whole():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
  def jpeg():
    wide, region = _jpeg_window(encoded, box)
    top, left = tf.cast(region[1], tf.int32), tf.cast(region[0], tf.int32)
    return wide[top:top + box[2], left:left + box[3]]
  return tf.cond(tf.io.is_jpeg(encoded), jpeg, whole)


def reduced_ratio(h, w, size):
  """The DCT-domain scale 1/r a box of h x w decodes at with reduce=True: the largest r of
  1, 2, 4, 8 with min(h, w) >= r size (the box still at least size px at that scale)."""
  side = np.minimum(h, w)
  return np.where(side >= 8 * size, 8, np.where(side >= 4 * size, 4,
                                                np.where(side >= 2 * size, 2, 1)))


def _decode_reduced(encoded, box, size):
  """TF: (pixels, (left, top, right, bottom) float) of a JPEG box decoded at reduced_ratio's
  scale; at scale 1 the exact crop (the region its whole)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  side = tf.reduce_min(box[2:])
  k = sum(tf.cast(side >= m * size, tf.int32) for m in (2, 4, 8))  # log2 of the ratio
  exact = lambda: (decode_crop(encoded, box), tf.cast(tf.stack([0, 0, box[3], box[2]]),
                                                      tf.float32))
  return tf.switch_case(k, [exact] + [lambda r=r: _jpeg_window(encoded, box, r)
                                      for r in (2, 4, 8)])


def resize(crop, size, interpolation='bilinear', region=None):
  """numpy uint8 [h, w, 3] -> uint8 [size, size, 3]: PIL's antialiased resize of the image
  (torchvision's resize of a PIL image, same integer arithmetic); region: (left, top, right,
  bottom) of the image to resize (PIL's `box`: its filter reads the pixels around it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  region = None if region is None else tuple(float(v) for v in region)
  out = Image.fromarray(np.asarray(crop, np.uint8)).resize(
      (size, size), _PIL_METHODS[interpolation], box=region)
  return np.asarray(out, np.uint8)


def decode_crop_resize(encoded, box, size, interpolation='bilinear', reduce=False):
  """TF: encoded image bytes, int box (top, left, h, w) -> uint8 [size, size, 3].

  reduce: a JPEG box whose shorter side is at least 2, 4 or 8 x size decodes at 1/2, 1/4 or
  1/8 scale in the DCT domain (reduced_ratio) and its region of that image is resized; faster,
  but not the full decode's pixels (tests bound the difference); other boxes as without."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if reduce:
    box = tf.cast(box, tf.int32)
    crop, region = tf.cond(tf.io.is_jpeg(encoded), lambda: _decode_reduced(encoded, box, size),
                           lambda: (decode_crop(encoded, box),
                                    tf.cast(tf.stack([0, 0, box[3], box[2]]), tf.float32)))
    fn, args = lambda c, r: resize(c, size, interpolation, r), [crop, region]
  else:
    fn, args = lambda c: resize(c, size, interpolation), [decode_crop(encoded, box)]
  out = tf.numpy_function(fn, args, tf.uint8, stateful=False)
  return tf.ensure_shape(out, (size, size, 3))


class HostCrops:
  """The train batches of a stage with crops from the whole image, produced on the host."""

  def __init__(self, images, image_size, interpolation='bilinear', workers=0, prefetch=2,
               reduce=False):
    if interpolation not in INTERPOLATIONS:
      raise UserError(f'unknown interpolation {interpolation!r}; use one of {INTERPOLATIONS}')
    if int(workers) < 0:
      raise UserError(f'data_workers={workers} must be >= 0 (0 = one thread per core)')
    self.images = images
    self.size = int(image_size)
    self.interpolation = interpolation
    self.workers = int(workers) or os.cpu_count() or 1
    self.prefetch = int(prefetch)
    self.reduce = bool(reduce)  # decode_crop_resize's reduced-scale decoding

  def epoch(self, seed, members, epoch, orders, batch_size, first_batch=0):
    """Yields uint8 [K, batch_size, S, S, 3] for batches first_batch.. of the epoch, in the
    layout of batches.padded_indices(orders, lo, hi, batch_size) (members = their ids)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    k = len(members)
    boxes = [epoch_boxes(self.images, seed, m, epoch, o) for m, o in zip(members, orders)]
    positions = np.stack([np.arange(len(o)) for o in orders])
    slices = batches.batch_slices(len(orders[0]), batch_size)[first_batch:]
    if not slices:
      return
    idx, box = [], []
    for lo, hi in slices:
      pos, _ = batches.padded_indices(positions, lo, hi, batch_size)  # [K, B] positions
      idx.append(np.stack([orders[j][pos[j]] for j in range(k)]))
      box.append(np.stack([boxes[j][pos[j]] for j in range(k)]))
    idx, box = np.stack(idx), np.stack(box)  # [batches, K, B], [batches, K, B, 4]
    data = self.images.data

    def fetch(i):
      return data[i]

    def load(i, b):
      encoded = tf.numpy_function(fetch, [i], tf.string, stateful=False)
      return decode_crop_resize(encoded, b, self.size, self.interpolation, self.reduce)

    ds = tf.data.Dataset.from_tensor_slices((idx.reshape(-1), box.reshape(-1, 4)))
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = self.workers
    ds = ds.with_options(options).map(load, num_parallel_calls=self.workers)
    ds = ds.batch(k * batch_size).prefetch(self.prefetch)
    for out in ds.as_numpy_iterator():
      yield out.reshape(k, batch_size, self.size, self.size, 3)
