"""Host crops (data/host_pipeline.py) against the train step that consumes them, and the memory.

  python bench/bench_host_pipeline.py [--images 512 --batch 32 --workers 1,2 --steps 3
                                       --repeat 3]

Input: synthetic JPEGs (quality 90) of the sizes of Oxford pets / Food-101 images (500x375,
375x500, 512x512, 800x600), kept encoded in host memory as datasets.load_dataset keeps a
variable-size training split; every epoch the pipeline decodes each, cuts a RandomResizedCrop
box and resizes it to 224 px (antialiased bilinear). Measured: images/s of one epoch per
number of tf.data threads (after the first batch; 0 = one per core), side by side with the
same pipeline with reduced-scale decoding (HostCrops(reduce=True)) and the previous pipeline
(whole-image decode with TF's default fast IDCT, crop, TF's antialiased resize) in alternating
epochs, each rate as wall-clock images/s and as images per CPU-second of the
process (what one thread of an unloaded core would do; on a shared machine the wall rate
counts other programs' time too), the load average beside them, the host memory the encoded
images hold
(bytes and the process's RSS growth) beside the 256 x 256 images kept for evaluation, and the
images/s of the engine's ResNet-50 train step at 224 px (flip + normalise of the host crops on
the device) on the same machine.
"""

import argparse
import io
import os
import sys
import time

import jax
import numpy as np
from PIL import Image
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from enstransfer_jax import models, optim  # pylint: disable=wrong-import-position
from enstransfer_jax.data import batches, host_pipeline  # pylint: disable=wrong-import-position
from enstransfer_jax.training import step as step_lib  # pylint: disable=wrong-import-position

SIZES = ((375, 500), (500, 375), (512, 512), (600, 800))


def _jpeg(rng, h, w):
  y, x = np.mgrid[0:h, 0:w]
  image = 128 + 90 * np.sin(x[..., None] / rng.uniform(5, 40, 3) + y[..., None] / 23.0)
  image = np.clip(image + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def _rss():
  return psutil.Process().memory_info().rss


def encoded_images(n, seed=0):
  rng = np.random.default_rng(seed)
  sizes = [SIZES[i % len(SIZES)] for i in range(n)]
  distinct = [_jpeg(rng, h, w) for h, w in SIZES]  # encoding is slow; the bytes are copied
  data = np.empty(n, object)
  data[:] = [bytes(bytearray(distinct[i % len(SIZES)])) for i in range(n)]
  return host_pipeline.EncodedImages(data, np.array([h for h, _ in sizes], np.int32),
                                     np.array([w for _, w in sizes], np.int32))


def previous_decode_crop_resize(encoded, box, size, interpolation='bilinear', reduce=False):
  """The pipeline before crop-only decoding: whole decode (TF's default IDCT), crop, TF resize
  (reduce: not used)."""
  del reduce
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  box = tf.cast(box, tf.int32)
  crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
  out = tf.image.resize(crop, (size, size), method=interpolation, antialias=True)
  return tf.ensure_shape(tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8),
                         (size, size, 3))


def pipeline_rate(images, batch, workers, name='new'):
  """(wall images/s, images per CPU-second of the process, peak RSS) of one epoch of the
  'new', 'reduced' or 'previous' pipeline."""
  feed = host_pipeline.HostCrops(images, 224, workers=workers, reduce=name == 'reduced')
  order = batches.epoch_order(0, 1, 1, len(images.data))
  real = host_pipeline.decode_crop_resize
  if name == 'previous':
    host_pipeline.decode_crop_resize = previous_decode_crop_resize
  try:
    it = feed.epoch(0, [1], 1, [order], batch)
    next(it)  # the first batch includes tf.data's start-up
    peak, start, cpu, count = _rss(), time.perf_counter(), time.process_time(), 0
    for out in it:
      count += out.shape[1]
      peak = max(peak, _rss())
    return (count / (time.perf_counter() - start), count / (time.process_time() - cpu), peak)
  finally:
    host_pipeline.decode_crop_resize = real


def step_rate(batch, steps):
  config = base.get_config()
  model = models.create_model('ResNet50', 100)
  variables = models.init_variables(model, jax.random.PRNGKey(0), image_size=224)
  tx = optim.create_optimizer(config)
  terms = step_lib.Terms()
  schedule = {'lr': np.full(64, 0.05, np.float32), 'momentum': np.full(64, 0.9, np.float32)}
  stacked = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], variables)
  state = step_lib.make_init_state(tx, terms)(stacked, np.zeros(1, np.int32),
                                              np.ones(1, np.int32), schedule)
  rng = np.random.default_rng(0)
  data = {'images': rng.integers(0, 256, (1, batch, 224, 224, 3), dtype=np.uint8),
          'labels': rng.integers(0, 100, (1, batch)).astype(np.int32),
          'mask': np.ones((1, batch), np.float32), 'new_epoch': np.zeros(1, bool)}
  fn = step_lib.make_train_step(
      step_lib.StepSpec.from_config(config, model, terms, host_crops=True), tx)
  state, _ = fn(state, data, {})
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, _ = fn(state, data, {})
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return batch / np.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--images', type=int, default=512)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--workers', default='1,2',
                 help='tf.data threads to try, comma-separated (0 = one per core)')
  p.add_argument('--repeat', type=int, default=3, help='epochs of each pipeline per thread count')
  p.add_argument('--no-previous', action='store_true', help='skip the previous pipeline')
  p.add_argument('--no-reduced', action='store_true', help='skip the reduced-scale pipeline')
  p.add_argument('--steps', type=int, default=3, help='timed ResNet-50 steps (0 = skip)')
  args = p.parse_args()
  before = _rss()
  images = encoded_images(args.images)
  held = _rss() - before
  n = args.images
  print(f'{n} encoded JPEGs {SIZES}: {images.nbytes / n / 1024:.1f} KiB per image '
        f'({images.nbytes / 2**20:.1f} MiB; RSS +{held / 2**20:.1f} MiB); the 256 x 256 '
        f'eval copies: {256 * 256 * 3 / 1024:.1f} KiB per image')
  for workers in (int(w) for w in args.workers.split(',')):
    threads = workers or os.cpu_count()
    names = ['new'] + ['reduced'] * (not args.no_reduced) + ['previous'] * (not args.no_previous)
    runs = {name: [] for name in names}
    for _ in range(args.repeat):  # alternating, so all see the same load
      for name in names:
        runs[name].append(pipeline_rate(images, args.batch, workers, name))
    for name, got in runs.items():
      if not got:
        continue
      wall, cpu = max(g[0] for g in got), max(g[1] for g in got)
      print(f'host crops 224 px, {name:8s} pipeline, {threads} thread(s), batch {args.batch}: '
            f'{wall:.0f} images/s wall, {cpu:.0f} images per CPU-second (best of '
            f'{len(got)}; peak RSS {max(g[2] for g in got) / 2**20:.0f} MiB; load '
            f'{os.getloadavg()[0]:.1f})', flush=True)
    best = lambda name, i: max(g[i] for g in runs[name])
    for num, den in (('new', 'previous'), ('reduced', 'new')):
      if runs.get(num) and runs.get(den):
        print(f'  {num} / {den}: {best(num, 0) / best(den, 0):.2f}x wall, '
              f'{best(num, 1) / best(den, 1):.2f}x per CPU-second')
  if args.steps:
    print(f'ResNet-50 train step, 224 px, batch {args.batch}, {jax.devices()[0].device_kind}: '
          f'{step_rate(args.batch, args.steps):.1f} images/s')


if __name__ == '__main__':
  main()
