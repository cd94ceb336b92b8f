"""The reference's optimizers (torch SGD, torch AdamW) as lr-free optax transformations.

`create_optimizer(config, trainable_mask)` returns an optax transformation whose update
is the DIRECTION d of the step; the engine moves the parameters with
`apply_direction(params, d, lr) = params - lr * d`, lr taken from the schedule at the
global step. The optimizer state can so be reset at every member boundary
(`reset_state`) without restarting the schedule.

  sgd    (torch.optim.SGD, dampening 0): g' = g + wd p (coupled L2 on every parameter,
         BN and biases included); buf = g' at the first step after a reset, then
         buf = m buf + g'; d = buf, or g' + m buf with Nesterov.
  adamw  (torch.optim.AdamW, betas (0.9, 0.999), eps 1e-8, no amsgrad):
         mu = b1 mu + (1 - b1) g, nu = b2 nu + (1 - b2) g^2, t = steps of this leaf;
         d = wd p + (mu / (1 - b1^t)) / (sqrt(nu) / sqrt(1 - b2^t) + eps), so that
         p - lr d equals torch's p (1 - lr wd) - lr mu_hat / denom (decoupled decay).

`update(grads, state, params, momentum=None)`: `momentum` (a scalar, may be traced)
overrides SGD's momentum or AdamW's beta1 for this step, as torch's CyclicLR does; see
schedules.create_momentum_fn. Frozen leaves (trainable_mask False) are skipped as torch
skips parameters without gradient: zero direction, no weight decay, their state (buffer,
moments, step count) unchanged. Every leaf keeps its own step count, as torch does.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ('sgd', 'adamw')
ADAMW_BETAS = (0.9, 0.999)  # torch defaults, as in the reference's Swin configs
ADAMW_EPS = 1e-8


class SgdState(NamedTuple):
  trace: Any  # momentum buffer per parameter


class AdamWState(NamedTuple):
  count: Any  # int32 step count per parameter (torch's state['step'])
  mu: Any
  nu: Any


def _full_mask(trainable_mask, params):
  """Expands a mask (same tree as params, or a prefix of it) to one bool per leaf."""
  if trainable_mask is None:
    return jax.tree.map(lambda _: True, params)
  try:
    return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub),
                        trainable_mask, params)
  except (ValueError, TypeError) as err:
    raise ValueError('trainable_mask must have the tree structure of params (or a '
                     f'prefix of it) with bool leaves: {str(err).splitlines()[0]}') from None


def _select(keep_new, new, old):
  """new where the leaf is trainable, else old (static when the flag is a bool)."""
  if isinstance(keep_new, (bool, np.bool_)):
    return new if keep_new else old
  return jnp.where(keep_new, new, old)


def _masked_update(leaf_update, init_leaf, state_cls, trainable_mask, default_momentum):
  """Builds the transformation from a per-leaf update rule.

  init_leaf(p) -> one array per field of state_cls;
  leaf_update(g, p, old_fields, momentum) -> (direction, new_fields).
  """

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    per_leaf = [init_leaf(p) for p in leaves]
    return state_cls(*(treedef.unflatten([fields[k] for fields in per_leaf])
                       for k in range(len(state_cls._fields))))

  def update_fn(grads, state, params=None, *, momentum=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError('the optimizer needs params (weight decay): call '
                       'tx.update(grads, state, params)')
    m = default_momentum if momentum is None else jnp.asarray(momentum, jnp.float32)
    g_leaves, treedef = jax.tree.flatten(grads)
    p_leaves = treedef.flatten_up_to(params)
    mask = treedef.flatten_up_to(_full_mask(trainable_mask, params))
    s_leaves = [treedef.flatten_up_to(s) for s in state]
    directions, new_state = [], [[] for _ in state]
    for i, (g, p, keep) in enumerate(zip(g_leaves, p_leaves, mask)):
      old = tuple(s[i] for s in s_leaves)
      d, new = leaf_update(g, p, old, m)
      directions.append(_select(keep, d, jnp.zeros_like(d)))
      for k, (n, o) in enumerate(zip(new, old)):
        new_state[k].append(_select(keep, n, o))
    return (treedef.unflatten(directions),
            state_cls(*(treedef.unflatten(s) for s in new_state)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sgd_direction(momentum, weight_decay, nesterov=False, trainable_mask=None):
  """torch.optim.SGD (dampening 0) as an lr-free optax transformation."""

  def init_leaf(p):
    return (jnp.zeros_like(p),)

  def leaf_update(g, p, state, m):
    g = g + weight_decay * p
    buf = m * state[0] + g  # torch's first step (buffer None) gives buf = g too
    d = g + m * buf if nesterov else buf
    return d.astype(p.dtype), (buf.astype(p.dtype),)

  return _masked_update(leaf_update, init_leaf, SgdState, trainable_mask, momentum)


def adamw_direction(weight_decay, betas=ADAMW_BETAS, eps=ADAMW_EPS, trainable_mask=None):
  """torch.optim.AdamW (amsgrad off) as an lr-free optax transformation."""
  b1_default, b2 = betas
  log_b2 = math.log(b2)  # float64 here, so 1 - b2^t keeps its precision in float32

  def init_leaf(p):
    return (jnp.zeros([], jnp.int32), jnp.zeros_like(p), jnp.zeros_like(p))

  def leaf_update(g, p, state, b1):
    count, mu, nu = state
    count = count + 1
    t = count.astype(jnp.float32)
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g * g
    log_b1 = math.log(b1) if isinstance(b1, float) else jnp.log(b1)
    bc1 = -jnp.expm1(t * log_b1)
    bc2 = -jnp.expm1(t * jnp.float32(log_b2))
    d = weight_decay * p + (mu / bc1) / (jnp.sqrt(nu) / jnp.sqrt(bc2) + eps)
    return d.astype(p.dtype), (count, mu.astype(p.dtype), nu.astype(p.dtype))

  return _masked_update(leaf_update, init_leaf, AdamWState, trainable_mask, b1_default)


def create_optimizer(config, trainable_mask=None):
  """The lr-free transformation named by config.optimizer (sgd | adamw).

  Uses config.wd, and config.momentum / config.nesterov for sgd. trainable_mask: bools
  shaped like params (or a prefix of them), False = frozen.
  """
  name = str(config.optimizer).lower()
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {config.optimizer!r}; valid: '
                     f'{", ".join(OPTIMIZERS)}')
  wd = float(config.wd)
  if wd < 0:
    raise ValueError(f'config.wd must be >= 0, got {wd}')
  if name == 'adamw':
    return adamw_direction(wd, trainable_mask=trainable_mask)
  momentum, nesterov = float(config.momentum), bool(config.nesterov)
  if momentum < 0:
    raise ValueError(f'config.momentum must be >= 0, got {momentum}')
  if nesterov and momentum <= 0:
    raise ValueError('config.nesterov=True needs config.momentum > 0 (as torch SGD)')
  return sgd_direction(momentum, wd, nesterov, trainable_mask=trainable_mask)


def reset_state(optimizer, params):
  """A fresh optimizer state, as the reference's `optimizer.state = defaultdict(dict)`.

  Zero buffers/moments and step counts: torch's first step after the reset (buffer =
  gradient, Adam bias correction from t = 1) is what the update rules give from here.
  """
  return optimizer.init(params)


def apply_direction(params, direction, lr):
  """params - lr * direction, leaf by leaf, keeping each parameter's dtype."""
  return jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)
