"""Learning-rate (and momentum) schedules equal to the reference's torch schedulers.

`create_learning_rate_fn(config, steps_per_epoch)` returns `fn(step) -> lr`, a pure
jnp function of the global batch index `step` (0-based, counting every batch of the
whole run, all ensemble members included). It equals the rate that the reference's
torch scheduler (utils/lr_schedule.py of ens-hse-diploma) puts into the optimizer for
that batch when driven by the reference's loop (training/train.py): one scheduler for
the whole run of `total_epochs(config)` epochs, never reset between members, stepped
after every epoch, or after every batch for names starting `continious+` and, after the
first model, for names containing `fge`.

Let E = epochs, F = fge_epochs, W = warmup_epochs, w = fge_warmup_epochs,
e = step // steps_per_epoch (0-based epoch), cos01(x) = (1 + cos(pi x)) / 2:

  standard                lr * g(e / E): 1 up to 0.5, linear to 0.01 at 0.9, then 0.01
  cosine                  eta_min + (lr - eta_min) cos01((e mod E) / E)  (warm restarts)
  continious+cosine       the same per batch, period E * steps_per_epoch
  warmup_standard         e < W: lr (e + 1) / W;  else lr * g((e - W) / (E - W))
  warmup_cosine           e < W: warmup_lr (e + 1) / W;  else lr cos01((e - W) / (E - W))
  constant_cosine         e < W: warmup_lr;  else as warmup_cosine
  linear_warmup_cosine    e < W: warmup_lr + (lr - warmup_lr) e / W;  else as warmup_cosine
  cosine+warmup_cosine    e < E: lr cos01(e / E);  else with c = (e - E) mod F:
                          c < w: fge_lr (c + 1) / w, else fge_lr cos01((c - w) / (F - w))
  cosine+constant_cosine  the same with fge_lr during the w warm-up epochs
  linear_warmup_cosine+cosine  e < E: linear_warmup_cosine;  else fge_lr cos01(c / F)
  continious+cosine+sse   per batch: lr cos01(s / S) for s < S = E * steps_per_epoch, then
                          fge_lr cos01(((s - S) mod T) / T), T = F * steps_per_epoch
  cosine+fge              e < E: lr cos01(e / E);  then torch's triangular CyclicLR per
                          batch j = step - E * steps_per_epoch: period T, up = T // 2,
                          from 0.01 fge_lr to fge_lr and back
  linear_warmup_cosine+fge     linear_warmup_cosine, then the same CyclicLR
  constant                lr

The schedules with `+` (except continious+cosine) need num_fge >= 2, as in the reference.
torch's CyclicLR also cycles the optimizer's momentum (SGD) or beta1 (AdamW) inversely
between 0.9 and 0.8, and sets it to 0.9 for the whole run when built;
`create_momentum_fn` gives that value per step (pass it to the optimizer's update).
Values are computed from exact integer ratios in float32, so they match torch's float64
values to about 1e-7 relative; with `jax_enable_x64` on, in float64 from the config's float64
values (lr, momentum, ...), as torch computes them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax import optim
from enstransfer_jax.errors import UserError

SCHEDULERS = (
    'standard', 'cosine', 'continious+cosine', 'warmup_standard', 'warmup_cosine',
    'constant_cosine', 'cosine+fge', 'continious+cosine+sse', 'cosine+warmup_cosine',
    'cosine+constant_cosine', 'linear_warmup_cosine', 'linear_warmup_cosine+cosine',
    'linear_warmup_cosine+fge', 'constant')
# Names the reference asserts num_fge >= 2 for.
_ENSEMBLE_ONLY = ('cosine+fge', 'continious+cosine+sse', 'cosine+warmup_cosine',
                  'cosine+constant_cosine', 'linear_warmup_cosine+cosine',
                  'linear_warmup_cosine+fge')
_USES_WARMUP = ('warmup_standard', 'warmup_cosine', 'constant_cosine',
                'linear_warmup_cosine', 'linear_warmup_cosine+cosine',
                'linear_warmup_cosine+fge')
_CYCLIC = ('cosine+fge', 'linear_warmup_cosine+fge')  # torch CyclicLR after the first model
# torch CyclicLR defaults (cycle_momentum=True): momentum/beta1 goes 0.9 -> 0.8 -> 0.9.
_MAX_MOMENTUM, _BASE_MOMENTUM = 0.9, 0.8


def _field(config, name):
  if name not in config:
    raise UserError(f"config has no field '{name}' (scheduler "
                    f"'{config.get('scheduler')}' needs it); start from configs/base.py")
  return config[name]


def _check_int(value, what, minimum):
  if not isinstance(value, (int, float, np.integer)) or isinstance(value, bool) or (
      int(value) != value or value < minimum):
    raise UserError(f'{what} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def _int_field(config, name, minimum):
  return _check_int(_field(config, name), f'config.{name}', minimum)


def total_epochs(config):
  """Epochs of the whole run: epochs + (num_fge - 1) * fge_epochs."""
  epochs = _int_field(config, 'epochs', 1)
  num_fge = _int_field(config, 'num_fge', 1)
  if num_fge == 1:
    return epochs
  return epochs + (num_fge - 1) * _int_field(config, 'fge_epochs', 1)


def _validate(config, steps_per_epoch):
  """Checks the config for `config.scheduler`; returns its name."""
  name = _field(config, 'scheduler')
  if name not in SCHEDULERS:
    raise UserError(f'unknown scheduler {name!r}; valid names: {", ".join(SCHEDULERS)}')
  _check_int(steps_per_epoch, 'steps_per_epoch', 1)
  total_epochs(config)
  epochs = int(config.epochs)
  if name in _ENSEMBLE_ONLY and int(config.num_fge) < 2:
    raise UserError(f"scheduler '{name}' schedules ensemble cycles after the first "
                    'model: set num_fge >= 2 and fge_epochs >= 1 (or use cosine)')
  if name in _USES_WARMUP:
    # warmup_standard divides by warmup_epochs when torch builds it.
    warmup = _int_field(config, 'warmup_epochs', int(name == 'warmup_standard'))
    if warmup >= epochs:
      raise UserError(f"scheduler '{name}': warmup_epochs ({warmup}) must be smaller "
                      f'than epochs ({epochs})')
  if name in ('cosine+warmup_cosine', 'cosine+constant_cosine'):
    fge_warmup = _int_field(config, 'fge_warmup_epochs', 0)
    if fge_warmup >= int(config.fge_epochs):
      raise UserError(f"scheduler '{name}': fge_warmup_epochs ({fge_warmup}) must be "
                      f'smaller than fge_epochs ({config.fge_epochs})')
  if name in _CYCLIC and steps_per_epoch * int(config.fge_epochs) < 2:
    raise UserError(f"scheduler '{name}': CyclicLR needs steps_per_epoch * fge_epochs "
                    '>= 2 batches per cycle')
  return name


def _real():
  """The dtype of the schedules: float64 under jax_enable_x64, else float32."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _cos01(num, den):
  """(1 + cos(pi num / den)) / 2 for integer arrays num >= 0 and an int den > 0.

  Folds num into [0, den] with exact integer arithmetic, then uses cos^2 or sin^2 of
  a small angle, so values near 0 keep their relative precision in float32.
  """
  n = jnp.remainder(num, 2 * den)
  n = jnp.where(n > den, 2 * den - n, n)
  half_angle = _real()(math.pi / (2 * den))
  cos_form = jnp.cos(n.astype(_real()) * half_angle) ** 2
  sin_form = jnp.sin((den - n).astype(_real()) * half_angle) ** 2
  return jnp.where(2 * n <= den, cos_form, sin_form)


def _standard(k, last):
  """Factor of the reference's 'standard' schedule at alpha = k / last."""
  ramp = (179 * last - 198 * k).astype(_real()) / _real()(80 * last)
  return jnp.where(2 * k <= last, 1.0, jnp.where(10 * k <= 9 * last, ramp, 0.01))


def _cyclic_factor(j, period):
  """torch CyclicLR triangular scale factor in [0, 1] at batch j of the cycles."""
  up = period // 2
  r = jnp.remainder(j, period)
  rising = r.astype(_real()) / _real()(max(up, 1))
  falling = (period - r).astype(_real()) / _real()(period - up)
  return jnp.where(r <= up, rising, falling)


def _as_step(step):
  step = jnp.asarray(step)
  if not jnp.issubdtype(step.dtype, jnp.integer):
    raise UserError(f'step must be an integer (the global batch index), got {step.dtype}')
  return step.astype(jnp.int32)


def create_learning_rate_fn(config, steps_per_epoch):
  """Returns fn(step) -> float32 learning rate at global batch `step` (see module doc)."""
  name = _validate(config, steps_per_epoch)
  spe = int(steps_per_epoch)
  lr = float(config.lr)
  epochs = int(config.epochs)
  fge_lr = float(_field(config, 'fge_lr')) if name in _ENSEMBLE_ONLY else lr
  fge_epochs = int(config.fge_epochs) if name in _ENSEMBLE_ONLY else 1
  warmup = int(config.warmup_epochs) if name in _USES_WARMUP else 0
  warmup_lr = float(_field(config, 'warmup_lr')) if name in _USES_WARMUP else lr
  restarts = name in ('cosine', 'continious+cosine')
  eta_min = float(_field(config, 'eta_min')) if restarts else 0.0

  def warmup_then_cosine(e, kind):
    """warmup_cosine / constant_cosine / linear_warmup_cosine over epoch e."""
    after = lr * _cos01(jnp.maximum(e - warmup, 0), epochs - warmup)
    if warmup == 0:
      return after
    e32 = e.astype(_real())
    during = {
        'warmup': warmup_lr * (e32 + 1) / warmup,
        'constant': jnp.full(e.shape, warmup_lr, _real()),
        'linear': ((warmup - e32) * warmup_lr + e32 * lr) / warmup,
    }[kind]
    return jnp.where(e < warmup, during, after)

  def cycles(e, s, first_model):
    """The first model's rate for e < epochs, then the cycles named after '+'."""
    c = jnp.maximum(e - epochs, 0) % fge_epochs
    if name.endswith('+fge'):
      j = jnp.maximum(s - epochs * spe, 0)
      base = 0.01 * fge_lr
      after = base + (fge_lr - base) * _cyclic_factor(j, spe * fge_epochs)
    elif name.endswith('+cosine'):
      after = fge_lr * _cos01(c, fge_epochs)
    else:  # cosine+warmup_cosine, cosine+constant_cosine
      w = int(config.fge_warmup_epochs)
      after = fge_lr * _cos01(jnp.maximum(c - w, 0), fge_epochs - w)
      if w > 0:
        ramp = fge_lr * (c + 1).astype(_real()) / w
        during = ramp if name == 'cosine+warmup_cosine' else jnp.full(c.shape, fge_lr)
        after = jnp.where(c < w, during, after)
    return jnp.where(e < epochs, first_model, after)

  def fn(step):
    s = _as_step(step)
    e = s // spe
    if name == 'constant':
      out = jnp.full(s.shape, lr, _real())
    elif name == 'standard':
      out = lr * _standard(e, epochs)
    elif name == 'warmup_standard':
      ramp = lr * (e + 1).astype(_real()) / max(warmup, 1)
      out = jnp.where(e < warmup, ramp,
                      lr * _standard(jnp.maximum(e - warmup, 0), epochs - warmup))
    elif name == 'cosine':
      out = eta_min + (lr - eta_min) * _cos01(e % epochs, epochs)
    elif name == 'continious+cosine':
      out = eta_min + (lr - eta_min) * _cos01(s % (epochs * spe), epochs * spe)
    elif name in ('warmup_cosine', 'constant_cosine', 'linear_warmup_cosine'):
      out = warmup_then_cosine(e, name.split('_')[0])
    elif name == 'continious+cosine+sse':
      first, period = epochs * spe, fge_epochs * spe
      out = jnp.where(s < first, lr * _cos01(s, first),
                      fge_lr * _cos01(jnp.maximum(s - first, 0) % period, period))
    elif name.startswith('linear_warmup_cosine+'):
      out = cycles(e, s, warmup_then_cosine(e, 'linear'))
    else:  # cosine+fge, cosine+warmup_cosine, cosine+constant_cosine
      out = cycles(e, s, lr * _cos01(e, epochs))
    return out.astype(_real())

  return fn


def create_momentum_fn(config, steps_per_epoch):
  """Returns fn(step) -> the SGD momentum (AdamW beta1) torch uses at that batch.

  Constant (config.momentum for sgd, AdamW's beta1 for adamw) except with the CyclicLR
  schedulers (cosine+fge, linear_warmup_cosine+fge): torch's CyclicLR sets it to 0.9
  when built (so for the whole first model, whatever config.momentum says) and then,
  stepped per batch, moves it from 0.9 down to 0.8 while the rate rises and back.
  """
  name = _validate(config, steps_per_epoch)
  spe = int(steps_per_epoch)
  if name not in _CYCLIC:
    _field(config, 'optimizer')
    value = optim.default_momentum(config)
    return lambda step: jnp.full(_as_step(step).shape, value, _real())
  start, period = int(config.epochs) * spe, int(config.fge_epochs) * spe

  def fn(step):
    s = _as_step(step)
    cyc = _MAX_MOMENTUM - (_MAX_MOMENTUM - _BASE_MOMENTUM) * _cyclic_factor(
        jnp.maximum(s - start, 0), period)
    return jnp.where(s < start, _real()(_MAX_MOMENTUM), cyc).astype(_real())

  return fn


def lr_table(config, steps_per_epoch):
  """numpy float32 array of the learning rate at every batch of the run (for plots)."""
  return step_tables(config, steps_per_epoch, pad=False)['lr']


def step_tables(config, steps_per_epoch, *, pad=True, min_length=0):
  """{'lr', 'momentum'}: the schedules at every batch of the run, computed by one jitted
  program. With `pad`, the length is max(steps, min_length) rounded up to a power of two (the
  last value repeated): the train step reads both at its step counter, and runs whose tables
  have the same length share one compiled step."""
  steps = total_epochs(config) * int(steps_per_epoch)
  length = 1 << (max(steps, min_length, 2) - 1).bit_length() if pad else steps
  lr_fn = create_learning_rate_fn(config, steps_per_epoch)
  mom_fn = create_momentum_fn(config, steps_per_epoch)
  index = np.minimum(np.arange(length), steps - 1).astype(np.int32)
  lr, mom = jax.jit(lambda s: (lr_fn(s), mom_fn(s)))(index)
  return {'lr': np.asarray(lr), 'momentum': np.asarray(mom)}
