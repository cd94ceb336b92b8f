"""Per-image cost of each way to cut a RandomResizedCrop box out of a JPEG and resize it, one thread.

  python bench/bench_jpeg_decode.py [--images 512 --repeat 3 --size 224]

Input: bench_host_pipeline.py's synthetic quality-90 JPEGs (500x375, 375x500, 512x512, 800x600)
and one RandomResizedCrop box per image (host_pipeline.epoch_boxes). Every variant runs as the
pipeline runs it: a tf.data map over (index, box) on a private pool of one thread, the bytes
fetched from the numpy object array by a tf.numpy_function unless the variant says otherwise.
The variants run in alternating rounds in one process, so all see the same load; printed per
variant: CPU ms per image (the process's CPU time / images), images per CPU-second and wall
images/s, each the best of --repeat rounds, with the load average.

Full pipelines (uint8 [size, size, 3] out):
  previous      whole decode (TF's default fast IDCT), crop, TF's float antialiased resize
  default       host_pipeline.decode_crop_resize: decode_and_crop_jpeg of the box widened by
                16 px (accurate IDCT), PIL's uint8 resize in a numpy_function
  reduced       the same with reduce=True: 1/2, 1/4, 1/8 scale DCT-domain decoding of boxes at
                least 2, 4, 8 x size (pixels not the full decode's)
  box-fast-idct default with TF's fast IDCT (pixels not PIL's)
  box+tf-resize decode_crop, then TF's float antialiased resize in the graph: no Python
                after the fetch
  bytes-in-tf   default with the bytes gathered from a TF string tensor: one Python crossing
                per image, not two (a second copy of the encoded images)
  pil           PIL in one crossing: fetch, whole decode (accurate IDCT), crop, uint8 resize
  pil-draft     pil with Image.draft's 1/2, 1/4, 1/8 scale decode, as reduced chooses it
Parts (one value out, so nothing is copied back; the op that makes it runs whole):
  fetch         the numpy_function fetch of the bytes alone (and tf.data's cost per image)
  whole         TF whole decode, accurate IDCT       whole-fast-idct  the same, fast IDCT
  box           decode_crop (accurate)               pil-whole        PIL whole decode
  whole/8       TF whole decode at 1/8 scale (DC coefficients only: the entropy decoding, the
                floor of any decode of the whole image)
  box/8         the widened box at 1/8 scale (entropy decoding down to the box's bottom: the
                floor of any decode of the box)
  pil-resize    PIL's resize of the decoded crop     tf-resize        TF's resize of it
  crop-fetch    the numpy_function fetch of the decoded crop (subtract from the two above)
Then the reduced pipeline's difference from the default on the boxes it decodes at reduced
scale, in 0-255 levels.
"""

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_host_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from enstransfer_jax.data import batches  # pylint: disable=wrong-import-position
from enstransfer_jax.data import host_pipeline as hp  # pylint: disable=wrong-import-position


def pil_crop_resize(encoded, box, size, draft=False):
  """PIL: decode, crop, antialiased bilinear uint8 resize; draft: DCT-domain reduced scale."""
  top, left, h, w = (int(v) for v in box)
  im = Image.open(io.BytesIO(encoded))
  r = int(hp.reduced_ratio(h, w, size)) if draft else 1
  if r > 1:
    im.draft('RGB', (im.size[0] // r, im.size[1] // r))
  im = im.convert('RGB') if im.mode != 'RGB' else im
  if r > 1:
    region = (left / r, top / r, (left + w) / r, (top + h) / r)
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=region))
  return np.asarray(im.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR))


def variants(data, crops, size):
  """name -> tf.data map function (index, box) -> tensor; crops: the decoded crops, by
  position (the resize-only parts run on range(N))."""
  table = tf.constant(list(data))
  fetch = lambda i: tf.numpy_function(lambda j: data[j], [i], tf.string, stateful=False)
  crop = lambda i: tf.ensure_shape(tf.numpy_function(lambda j: crops[j], [i], tf.uint8,
                                                     stateful=False), (None, None, 3))
  tf_resize = lambda c: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
      c, (size, size), antialias=True)), 0, 255), tf.uint8)
  pil = lambda f: lambda i, b: tf.numpy_function(f, [i, b], tf.uint8, stateful=False)

  def box_fast(encoded, box):
    box = tf.cast(box, tf.int32)
    shape = tf.io.extract_jpeg_shape(encoded)[:2]
    lo, hi = tf.maximum(box[:2] - 16, 0), tf.minimum(box[:2] + box[2:] + 16, shape)
    wide = tf.io.decode_and_crop_jpeg(encoded, tf.concat([lo, hi - lo], 0), channels=3)
    top, left = box[0] - lo[0], box[1] - lo[1]
    return wide[top:top + box[2], left:left + box[3]]

  def box8(encoded, box):
    box = tf.cast(box, tf.int32)
    shape = tf.io.extract_jpeg_shape(encoded)[:2]
    lo = tf.maximum(box[:2] - 16, 0) // 8
    hi = -(-tf.minimum(box[:2] + box[2:] + 16, shape) // 8)
    return tf.io.decode_and_crop_jpeg(encoded, tf.concat([lo, hi - lo], 0), 3, ratio=8)

  resize = lambda c: tf.numpy_function(lambda x: hp.resize(x, size), [c], tf.uint8,
                                       stateful=False)
  return {
      'previous': lambda i, b: bench_host_pipeline.previous_decode_crop_resize(
          fetch(i), b, size),
      'default': lambda i, b: hp.decode_crop_resize(fetch(i), b, size),
      'reduced': lambda i, b: hp.decode_crop_resize(fetch(i), b, size, reduce=True),
      'box-fast-idct': lambda i, b: resize(box_fast(fetch(i), b)),
      'box+tf-resize': lambda i, b: tf_resize(hp.decode_crop(fetch(i), b)),
      'bytes-in-tf': lambda i, b: hp.decode_crop_resize(tf.gather(table, i), b, size),
      'pil': pil(lambda j, x: pil_crop_resize(data[j], x, size)),
      'pil-draft': pil(lambda j, x: pil_crop_resize(data[j], x, size, True)),
      'fetch': lambda i, b: tf.strings.length(fetch(i)),
      'whole': lambda i, b: tf.io.decode_jpeg(fetch(i), 3, dct_method='INTEGER_ACCURATE'),
      'whole-fast-idct': lambda i, b: tf.io.decode_jpeg(fetch(i), 3),
      'box': lambda i, b: hp.decode_crop(fetch(i), b),
      'pil-whole': lambda i, b: tf.numpy_function(
          lambda j: np.asarray(Image.open(io.BytesIO(data[j])).convert('RGB')), [i],
          tf.uint8, stateful=False),
      'whole/8': lambda i, b: tf.io.decode_jpeg(fetch(i), 3, ratio=8),
      'box/8': lambda i, b: box8(fetch(i), b),
      'pil-resize': lambda i, b: tf.numpy_function(
          lambda j: hp.resize(crops[j], size), [i], tf.uint8, stateful=False),
      'tf-resize': lambda i, b: tf_resize(crop(i)),
      'crop-fetch': lambda i, b: crop(i),
  }


def rate(fn, idx, box):
  """(CPU ms per image, images per CPU-second, wall images/s) of one pass, one thread."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 1
  ds = tf.data.Dataset.from_tensor_slices((idx, box)).with_options(options)
  # Each output cut to one value (the op that makes it still runs whole) and batched by 64, so
  # the Python iteration costs nothing per image.
  ds = ds.map(lambda i, b: tf.reshape(fn(i, b), [-1])[:1], num_parallel_calls=1)
  it = iter(ds.batch(64).prefetch(1))
  next(it)  # start-up and tracing
  n, wall, cpu = 0, time.perf_counter(), time.process_time()
  for out in it:
    n += len(out)
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  return 1e3 * cpu / n, n / cpu, n / wall


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--images', type=int, default=512)
  p.add_argument('--repeat', type=int, default=3)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--only', default='', help='comma-separated variant names (default: all)')
  args = p.parse_args()
  images = bench_host_pipeline.encoded_images(args.images)
  idx = np.asarray(batches.epoch_order(0, 1, 1, args.images), np.int64)
  boxes = hp.epoch_boxes(images, 0, 1, 1, idx)
  full = [np.asarray(Image.open(io.BytesIO(images.data[j])).convert('RGB')) for j in range(4)]
  crops = np.empty(args.images, object)
  crops[:] = [full[j % 4][t:t + h, l:l + w] for j, (t, l, h, w) in zip(idx, boxes)]
  fns = variants(images.data, crops, args.size)
  names = [n for n in fns if not args.only or n in args.only.split(',')]
  reduced = hp.reduced_ratio(boxes[:, 2], boxes[:, 3], args.size) > 1
  bottom = np.mean((boxes[:, 0] + boxes[:, 2]) / images.heights[idx])
  print(f'{args.images} JPEGs, {args.size} px, TF {tf.__version__}, Pillow '
        f'{Image.__version__}, {os.cpu_count()} cores: {reduced.mean():.0%} of the boxes decode '
        f'at reduced scale; the mean box ends at {bottom:.0%} of the height', flush=True)
  got = {n: [] for n in names}
  for _ in range(args.repeat):  # alternating rounds: all variants see the same load
    for n in names:
      positions = np.arange(args.images) if n in ('pil-resize', 'tf-resize', 'crop-fetch') else idx
      got[n].append(rate(fns[n], positions, boxes))
  for n in names:
    ms = min(g[0] for g in got[n])
    print(f'{n:16s} {ms:6.3f} CPU ms/image {1e3 / ms:6.0f} images per CPU-second '
          f'{max(g[2] for g in got[n]):6.0f} images/s wall (best of {args.repeat}; load '
          f'{os.getloadavg()[0]:.1f})', flush=True)
  diff = [np.abs(hp.decode_crop_resize(images.data[j], b, args.size, reduce=True).numpy()
                 .astype(int) - hp.decode_crop_resize(images.data[j], b, args.size).numpy())
          for j, b in zip(idx[reduced], boxes[reduced])]
  if diff:
    print(f'reduced - default on its {len(diff)} reduced boxes: max {max(d.max() for d in diff)}'
          f', mean {np.mean([d.mean() for d in diff]):.2f} levels (per image mean at most '
          f'{max(d.mean() for d in diff):.2f})')


if __name__ == '__main__':
  main()
