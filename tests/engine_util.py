"""A tiny experiment config shared by the engine tests (digits, ResNet-18 of width 4, 16 px)."""

import contextlib

import jax

from configs import base
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
  c.wandb_mode = 'disabled'
  c.log_every_steps = 1
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return c


@contextlib.contextmanager
def spy_on_stages(records):
  """Records, for every stage, the state handed to its first train step (on the host)."""
  real = step_lib.make_train_step

  def make(model, tx, config, terms):
    step = real(model, tx, config, terms)
    seen = {'first': True}

    def wrapped(state, *args):
      if seen['first']:
        records.append({'state': jax.device_get(state), 'terms': terms,
                        'member_ids': jax.device_get(args[2])})
        seen['first'] = False
      return step(state, *args)
    return wrapped

  step_lib.make_train_step = make
  try:
    yield records
  finally:
    step_lib.make_train_step = real
