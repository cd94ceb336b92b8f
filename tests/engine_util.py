"""A tiny experiment config shared by the engine tests (digits, ResNet-18 of width 4, 16 px)."""

import contextlib
import dataclasses

import jax

import numpy as np

import configs
from configs import base
from enstransfer_jax import evaluator
from enstransfer_jax.data import batches
from enstransfer_jax.training import resume
from enstransfer_jax.training import step as step_lib


def tiny_config(**overrides):
  c = base.get_config()
  c.name = 'tiny'
  c.dataset = 'digits'
  c.model = 'ResNet18'
  c.width = 4
  c.image_size = 16
  c.transform_name = 'none'
  c.batch_size = 599  # digits train = 1198: two full batches, one compiled shape
  c.eval_batch_size = 600
  c.ckpt = ''
  c.scheduler = 'cosine+warmup_cosine'
  c.epochs = 1
  c.num_fge = 3
  c.fge_epochs = 1
  c.lr = 0.05
  c.fge_lr = 0.1
  c.valid_freq = 0
  c.progress = False
  c.compilation_cache_dir = ''  # the tests' own cache (conftest.py)
  c.wandb_mode = 'disabled'
  c.log_every_steps = 1
  return configs.apply_overrides(c, overrides)


@contextlib.contextmanager
def noise_images(seed=0):
  """Every dataset loaded meanwhile has uniform uint8 noise for images (labels kept). Digits'
  4x4-block pixels make exact ties in max-pool windows, where float rounding (another device
  count, another member grouping) re-routes gradients from the first step; noise has none,
  so such runs agree step for step up to float32 rounding."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  real = datasets.load_dataset

  def load(*args, **kwargs):
    data = real(*args, **kwargs)
    rng = np.random.default_rng(seed)
    noise = lambda x: rng.integers(0, 256, x.shape, dtype=np.uint8)
    return dataclasses.replace(data, train_images=noise(data.train_images),
                               test_images=noise(data.test_images))

  datasets.load_dataset = load
  try:
    yield
  finally:
    datasets.load_dataset = real


@contextlib.contextmanager
def spy_on_stages(records):
  """Records, for every stage, the state handed to its first train step (on the host)."""
  real = step_lib.make_train_step

  def make(spec, tx):
    step = real(spec, tx)
    terms = spec.terms

    def wrapped(state, *args):
      ids = list(jax.device_get(state.member))
      if not records or records[-1]['member_ids'] != ids:  # the first step of a stage
        records.append({'state': jax.device_get(state), 'terms': terms, 'member_ids': ids})
      return step(state, *args)
    return wrapped

  step_lib.make_train_step = make
  try:
    yield records
  finally:
    step_lib.make_train_step = real


def progress_position(workdir):
  """The position of a work dir's progress checkpoint, as the engine reads it."""
  return resume.Progress(workdir).position()


def stacked_state(variables, tx, terms, steps, members, config=None, steps_per_epoch=1):
  """A start TrainState of len(variables) members, as the engine builds a stage's (the
  schedules of `config`, default a constant lr 0.1 and momentum 0.9)."""
  from enstransfer_jax import schedules  # pylint: disable=g-import-not-at-top
  config = config or tiny_config(scheduler='constant', num_fge=1, lr=0.1)
  table = schedules.step_tables(config, steps_per_epoch)
  stacked = evaluator.stack(variables)
  return step_lib.make_init_state(tx, terms)(stacked, np.asarray(steps, np.int32),
                                             np.asarray(members, np.int32), table,
                                             config.seed)


def full_batch(images, labels, new_epoch=False):
  """A step's batch of [K, B, ...] images and labels without padding."""
  k, b = labels.shape
  return {'images': images, 'labels': labels, 'mask': np.ones((k, b), np.float32),
          'new_epoch': np.full((k,), new_epoch)}


def torch_twin(variables, num_classes, train=False):
  """The PyTorch ResNet-18 (tests/torch_resnet.py) holding `variables` (width from conv1)."""
  import torch  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from tests import torch_resnet  # pylint: disable=g-import-not-at-top
  width = np.asarray(variables['params']['conv1']['kernel']).shape[-1]
  net = torch_resnet.TorchResNet('ResNet18', num_classes, width=width).double()
  net.load_state_dict({k: v.double() if v.is_floating_point() else v
                       for k, v in checkpoints.flax_to_torch(variables).items()})
  net.train(train)
  torch.set_grad_enabled(train)
  return net


def torch_forward(net, x):
  """Logits and the five feature maps (NHWC, float64 numpy) of NHWC images x."""
  import torch  # pylint: disable=g-import-not-at-top
  t = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2).copy())
  logits, maps = net(t)
  maps = [m.detach().numpy() for m in maps]
  maps = [m.transpose(0, 2, 3, 1) if m.ndim == 4 else m for m in maps]
  return logits.detach().numpy(), maps


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def first_batch(config, data, member, epoch=1):
  """Raw uint8 images and labels of the first batch a member sees in `epoch` (the engine's
  order: batches.epoch_order of (seed, member, epoch), full batches only)."""
  n = len(data.train_labels)
  order = batches.epoch_order(config.seed, member, epoch, n)[:config.batch_size]
  return data.train_images[order], data.train_labels[order]
