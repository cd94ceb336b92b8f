"""drop_last: an epoch skips its last partial batch, as the reference's Swin loaders do
(DataLoader(..., drop_last=True)), and steps per epoch and the schedules count full batches.

Checked against independent values: the batches a run trains on (spied at the train step)
are the first floor(n / B) full slices of each epoch's order, and the learning rate logged at
every step equals the per-batch cosine formula written out here with floor(n / B) steps per
epoch.
"""

import json
import math
import os

import numpy as np
import pytest
import torch

from enstransfer_jax.data import batches, datasets
from enstransfer_jax.training import run_experiment
from enstransfer_jax.training import step as step_lib
from tests import engine_util


@pytest.mark.parametrize('n,batch_size', [(10, 4), (12, 4), (1198, 500), (7, 7)])
def test_drop_last_batches_are_torch_dataloaders(n, batch_size):
  order = batches.epoch_order(0, 1, 1, n)
  loader = torch.utils.data.DataLoader(list(order), batch_size=batch_size, drop_last=True)
  slices = batches.batch_slices(n, batch_size, drop_last=True)
  assert batches.num_batches(n, batch_size, drop_last=True) == len(loader)
  assert [list(order[lo:hi]) for lo, hi in slices] == [b.tolist() for b in loader]


def test_batch_slices_with_drop_last_are_the_full_batches():
  assert batches.batch_slices(10, 4, drop_last=True) == [(0, 4), (4, 8)]
  assert batches.batch_slices(8, 4, drop_last=True) == [(0, 4), (4, 8)]
  assert batches.batch_slices(10, 4) == [(0, 4), (4, 8), (8, 10)]
  for n, b in ((1198, 500), (1198, 599), (1198, 64), (7, 1), (7, 7)):
    assert batches.num_batches(n, b, drop_last=True) == n // b
    assert batches.num_batches(n, b) == -(-n // b)
  with pytest.raises(ValueError, match='leaves no full batch'):
    batches.batch_slices(3, 4, drop_last=True)


def _cos01(x):
  return (1 + math.cos(math.pi * x)) / 2


def test_drop_last_run_takes_full_batches_and_counts_them_in_the_schedule(tmp_path,
                                                                        monkeypatch):
  batch, lr, fge_lr, epochs, fge_epochs = 500, 1e-3, 4e-4, 2, 1
  config = engine_util.tiny_config(
      model='SwinNano', width=16, image_size=16, optimizer='adamw', wd=0.05, clip_grad=5.0,
      label_smoothing=0.1, batch_size=batch, drop_last=True, epochs=epochs, num_fge=2,
      fge_epochs=fge_epochs, lr=lr, fge_lr=fge_lr, scheduler='continious+cosine+sse',
      **{'aug.mixup': 0.8, 'aug.cutmix': 1.0})
  seen = []
  real = step_lib.make_train_step

  def make(*args):
    train_step = real(*args)

    def wrapped(state, batch, *rest):
      seen.append((np.asarray(batch['mask']).copy(), np.asarray(batch['labels']).copy()))
      return train_step(state, batch, *rest)
    return wrapped

  monkeypatch.setattr(step_lib, 'make_train_step', make)
  workdir = str(tmp_path / 'run')
  run_experiment(config, workdir)
  data = datasets.load_dataset(config)
  n = len(data.train_labels)
  spe = n // batch  # 2 (1198 digits): the partial third batch of 198 is dropped
  assert n % batch and spe == 2

  # Every step: a full batch, the next full slice of the epoch's order.
  expected = [(m, e, b) for m, e_count in ((1, epochs), (2, fge_epochs))
              for e in range(1, e_count + 1) for b in range(spe)]
  assert len(seen) == len(expected)
  for (mask, labels), (m, e, b) in zip(seen, expected):
    assert mask.shape == (1, batch) and mask.min() == 1.0
    order = batches.epoch_order(config.seed, m, e, n)
    np.testing.assert_array_equal(labels[0], data.train_labels[order[b * batch:(b + 1) * batch]])

  # The logged step numbers and learning rates: spe steps per epoch in the schedule.
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [r for r in lines if r['event'] == 'train']
  assert [r['step'] for r in train] == list(range(len(expected)))
  first, period = epochs * spe, fge_epochs * spe
  for r in train:
    s = r['step']
    want = lr * _cos01(s / first) if s < first else fge_lr * _cos01(((s - first) % period)
                                                                    / period)
    np.testing.assert_allclose(r['lr'], want, rtol=1e-5, atol=1e-12, err_msg=f'step {s}')
  info = json.load(open(os.path.join(workdir, 'config.json')))
  assert info['drop_last'] is True
