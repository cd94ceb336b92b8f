"""Swin-Tiny train step on this machine: the JAX engine against a PyTorch Swin-Tiny step.

  python bench/bench_swin.py [--batch 8] [--steps 5] [--warmup 2]

Rows (images/s = batch / median step time after warm-up, each step waited for):
  jax-recipe  the engine's step of configs/swin_starsse.py: uint8 32 px images augmented on
              the device to 224 px (RandomResizedCrop, RandAugment, random erasing), Mixup /
              CutMix with smoothed targets, drop path, AdamW groups and clip_grad 5, float32
  jax-plain   the same step with transform_name='none' (resize only): the model, loss and
              optimizer without the augmentation
  torch       tests/torch_swin.py's Swin-Tiny (drop path 0.1) with the reference's step on
              already-augmented 224 px float images: timm-style batch Mixup of the images
              and soft targets, SoftTargetCrossEntropy, backward, clip_grad_norm_(5),
              AdamW with the Swin no-decay groups; AMP off (the reference's autocast is a
              CUDA feature); the reference's data loading and augmentation are not counted
The torch row uses torch's default CPU threads; the JAX rows XLA's.
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'bench'), os.path.join(ROOT, 'tests')]


def jax_row(batch, warmup, steps, transform):
  import gpu_bench  # pylint: disable=g-import-not-at-top
  s = dict(arch='SwinTiny', width=96, image_size=224, batch=batch)
  config = gpu_bench.swin_engine_config(s, 'float32')
  config.transform_name = transform
  lowered, state, run = gpu_bench.build_engine(config, 1)
  t = time.time()
  compiled = lowered.compile()
  compile_s = time.time() - t
  _, times, _ = gpu_bench.time_calls(lambda st, i: run(compiled, st, i), state, warmup, steps)
  return statistics.median(times), compile_s


def torch_row(batch, warmup, steps):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch_swin import TorchSwin  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = TorchSwin(100, drop_path_rate=0.1).train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    skip = p.ndim == 1 or name.endswith('.bias') or 'relative_position_bias_table' in name
    (no_decay if skip else decay).append(p)
  opt = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}],
                          lr=1e-4, weight_decay=0.25)
  x = torch.randn(batch, 3, 224, 224)
  labels = torch.randint(0, 100, (batch,))
  rng = np.random.default_rng(0)

  def step():
    lam = float(rng.beta(0.8, 0.8))
    xm = x * lam + x.flip(0) * (1 - lam)
    y = torch.nn.functional.one_hot(labels, 100).float() * 0.9 + 0.1 / 100
    y = y * lam + y.flip(0) * (1 - lam)
    logits, _ = model(xm)
    loss = torch.sum(-y * torch.log_softmax(logits, -1), -1).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()

  times = []
  for i in range(warmup + steps):
    t = time.time()
    step()
    if i >= warmup:
      times.append(time.time() - t)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  args = p.parse_args()
  print(f'load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs', flush=True)
  rows = {}
  for name, fn in (('torch', lambda: (torch_row(args.batch, args.warmup, args.steps), 0.0)),
                   ('jax-plain', lambda: jax_row(args.batch, args.warmup, args.steps, 'none')),
                   ('jax-recipe', lambda: jax_row(args.batch, args.warmup, args.steps,
                                                  'swin_imagenet'))):
    sec, compile_s = fn()
    rows[name] = sec
    print(f'{name:11s} batch {args.batch}: {args.batch / sec:7.2f} images/s '
          f'({1e3 * sec:8.1f} ms/step, compile {compile_s:.1f} s)', flush=True)
  print(f'jax-recipe / torch: {rows["torch"] / rows["jax-recipe"]:.2f}x, jax-plain / torch: '
        f'{rows["torch"] / rows["jax-plain"]:.2f}x; load average after: '
        f'{os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
