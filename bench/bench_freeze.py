"""Train-step time of each layer-freezing variant against no freezing, side by side.

  python bench/bench_freeze.py [--arch ResNet50 --width 32 --size 64 --batch 64 --steps 5]

Uses the engine's own step (training/step.py) with the freezing of a StarSSE cycle: the
optimizer masks the frozen modules and gradients stop below the highest frozen one. The thesis
reports epoch-time reductions of 1.66x, 2.5x and 3.125x for freezing before layer3, before
layer4 and through layer4 (on a GPU, BYOL ResNet-50 at 224 px).
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from enstransfer_jax import models, optim  # pylint: disable=wrong-import-position
from enstransfer_jax.training import config_check, step as step_lib  # pylint: disable=wrong-import-position

STEM = ('conv1', 'bn1', 'relu', 'maxpool')
VARIANTS = {
    'none': (),
    'before layer3': STEM + ('layer1', 'layer2'),
    'before layer4': STEM + ('layer1', 'layer2', 'layer3'),
    'through layer4': STEM + ('layer1', 'layer2', 'layer3', 'layer4'),
}
THESIS = {'none': 1.0, 'before layer3': 1.66, 'before layer4': 2.5, 'through layer4': 3.125}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', default='ResNet50')
  p.add_argument('--width', type=int, default=32)
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--steps', type=int, default=5)
  args = p.parse_args()
  config = base.get_config()
  config.model, config.width, config.image_size = args.arch, args.width, args.size
  config.transform_name = 'none'
  model = models.create_model(args.arch, 100, width=args.width)
  variables = models.init_variables(model, jax.random.PRNGKey(0), image_size=args.size)
  rng = np.random.default_rng(0)
  batch = {'images': rng.integers(0, 256, (1, args.batch, args.size, args.size, 3),
                                  dtype=np.uint8),
           'labels': rng.integers(0, 100, (1, args.batch)).astype(np.int32),
           'mask': np.ones((1, args.batch), np.float32), 'new_epoch': np.zeros(1, bool)}
  schedule = {'lr': np.full(1 << 10, 0.05, np.float32),
              'momentum': np.full(1 << 10, 0.9, np.float32)}
  stacked = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], variables)
  steps = {}
  for name, frozen in VARIANTS.items():
    tx = optim.create_optimizer(config, {k: k not in frozen for k in variables['params']})
    terms = step_lib.Terms(stop_gradient_after=config_check.frozen_prefix(frozen))
    state = step_lib.make_init_state(tx, terms)(stacked, np.zeros(1, np.int32),
                                                np.ones(1, np.int32), schedule,
                                                config.seed)
    fn = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
    state, _ = fn(state, batch, {})
    jax.block_until_ready(state)
    steps[name] = (fn, state)
  times = {name: [] for name in VARIANTS}
  for _ in range(args.steps):  # interleaved, so machine noise hits every variant alike
    for name, (fn, state) in steps.items():
      start = time.perf_counter()
      state, _ = fn(state, batch, {})
      jax.block_until_ready(state)
      times[name].append(time.perf_counter() - start)
      steps[name] = (fn, state)
  base_ms = 1000 * np.median(times['none'])
  print(f'{args.arch} width {args.width}, {args.size} px, batch {args.batch}, '
        f'{jax.devices()[0].device_kind}, median of {args.steps} steps')
  print(f"{'frozen':<16}{'ms/step':>10}{'speed-up':>10}{'thesis':>10}")
  for name in VARIANTS:
    ms = 1000 * np.median(times[name])
    print(f'{name:<16}{ms:>10.1f}{base_ms / ms:>10.2f}{THESIS[name]:>10.3f}')


if __name__ == '__main__':
  main()
