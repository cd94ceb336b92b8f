"""The reference's optimizers (torch SGD, torch AdamW) built from optax's own transformations.

`create_optimizer(config, trainable_mask)` returns

  optax.inject_hyperparams(inner)(learning_rate, momentum)

with `inner` = `optax.multi_transform({'trainable': rule, 'frozen': optax.set_to_zero()},
labels)` and `rule` one of

  sgd    optax.chain(optax.add_decayed_weights(wd),        # coupled L2 on every parameter
                     optax.trace(momentum, nesterov),      # torch's buffer, dampening 0
                     optax.scale_by_learning_rate(lr))     # torch.optim.SGD
  adamw  optax.chain(scale_by_torch_adam(b1=momentum, b2, eps),
                     optax.add_decayed_weights(wd),        # decoupled decay
                     optax.scale_by_learning_rate(lr))     # torch.optim.AdamW (amsgrad off)

applied with `optax.apply_updates`. `scale_by_torch_adam` is optax.scale_by_adam (same
state) with torch's bias corrections 1 - b^t computed as -expm1(t log b), log b2 taken in
float64: float32 `1 - 0.999**t` is off by about 1e-5 relative, which moves the parameters
by more than torch's own rounding. The engine sets the learning rate and the momentum
(SGD's momentum, AdamW's beta1; torch's CyclicLR cycles both) at every step from the
schedules, which are pure functions of the run's global step (`set_hyperparams`), so the
optimizer state can be emptied at every member boundary (`optimizer.init`) without
restarting the schedule. Frozen leaves (trainable_mask False) get a zero update and no
weight decay, and the rule keeps no state for them, as torch skips parameters without a
gradient. A leaf thawed after being frozen starts with an empty state (torch keeps its old
buffer); the engine never thaws a module within a stage.

Swin (the reference's utils/optimizers.py, for either optimizer): `rule` gets
`add_decayed_weights(wd, mask=decay_mask)` with no decay on 1-d leaves (norms, biases),
`absolute_pos_embed` and `relative_position_bias_table`; with `config.simmim` it ends
with `scale_by_tree(layer_scales)`, the layer-wise learning-rate decay
layer_decay ** (sum(depths) + 1 - layer_id) over sum(depths) + 2 groups (patch_embed 0,
block j of stage i sum(depths[:i]) + j + 1, stage i's patch merging sum(depths[:i + 1]),
norm and head sum(depths) + 1); torch applies a group's lr to its decay as well, so the
scale multiplies the whole update. `config.clip_grad` > 0 puts
`optax.clip_by_global_norm(clip_grad)` first in `rule`: the norm covers the trainable
leaves only, as torch's clip_grad_norm_ skips parameters without a gradient (torch
scales by clip / (norm + 1e-6), optax by clip / norm: 1e-6 / norm apart).
"""

import math

import jax
import jax.numpy as jnp
import optax

from enstransfer_jax import models
from enstransfer_jax.errors import UserError

OPTIMIZERS = ('sgd', 'adamw')
ADAMW_BETAS = (0.9, 0.999)  # torch defaults, as in the reference's Swin configs
ADAMW_EPS = 1e-8


def _labels(trainable_mask, params):
  """'trainable' / 'frozen' per leaf from a mask shaped like params (or a prefix of it)."""
  if trainable_mask is None:
    return jax.tree.map(lambda _: 'trainable', params)
  try:
    return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: 'trainable' if m else 'frozen',
                                                    sub), trainable_mask, params)
  except (ValueError, TypeError) as err:
    raise UserError('trainable_mask must have the tree structure of params (or a '
                    f'prefix of it) with bool leaves: {str(err).splitlines()[0]}') from None


def optimizer_name(config):
  """config.optimizer, lower case; one line for an unknown one."""
  name = str(config.optimizer).lower()
  if name not in OPTIMIZERS:
    raise UserError(f'unknown optimizer {config.optimizer!r}; valid: '
                    f'{", ".join(OPTIMIZERS)}')
  return name


def check(config):
  """The optimizer's fields (optimizer, wd, momentum, nesterov); returns (name, wd)."""
  name = optimizer_name(config)
  wd = float(config.wd)
  if wd < 0:
    raise UserError(f'config.wd={wd} must be >= 0')
  if name == 'sgd':
    if not 0 <= float(config.momentum) < 1:
      raise UserError(f'config.momentum={config.momentum} must be in [0, 1)')
    if bool(config.nesterov) and float(config.momentum) <= 0:
      raise UserError('config.nesterov=True needs config.momentum > 0 (as torch SGD)')
  return name, wd


def default_momentum(config):
  """SGD's momentum or AdamW's beta1 when no schedule changes it."""
  return float(config.momentum) if optimizer_name(config) == 'sgd' else ADAMW_BETAS[0]


def scale_by_torch_adam(b1, b2, eps):
  """Adam's direction mu_hat / (sqrt(nu_hat) + eps) with precise bias corrections."""
  log_b2 = math.log(b2)  # float64 here

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros,
                                  nu=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    t = count.astype(jnp.float32)
    bc1 = -jnp.expm1(t * jnp.log(jnp.asarray(b1, jnp.float32)))
    bc2 = -jnp.expm1(t * jnp.float32(log_b2))
    out = jax.tree.map(lambda m, v: ((m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)).astype(
        m.dtype), mu, nu)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


NO_DECAY_KEYWORDS = ('absolute_pos_embed', 'relative_position_bias_table')


def _name(path):
  """'layers.0.blocks.1.attn.qkv.kernel': the torch-like dotted name of a params path."""
  return '.'.join(str(getattr(k, 'key', k)) for k in path)


def decay_mask(params):
  """True where Swin's AdamW decays a leaf: >= 2-d and not a position embedding/table."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x.ndim > 1 and not any(k in _name(p) for k in NO_DECAY_KEYWORDS), params)


def swin_depths(params):
  """Blocks per stage, read from the params' 'layers.i' / 'blocks.j' names."""
  depths = []
  while f'layers.{len(depths)}' in params:
    stage = params[f'layers.{len(depths)}']
    depths.append(sum(1 for k in stage if str(k).startswith('blocks.')))
  return tuple(depths)


def swin_layer_id(name, depths):
  """The reference's get_swin_layer for a dotted name, over sum(depths) + 2 groups."""
  parts = name.split('.')
  if parts[0] in ('patch_embed', 'mask_token'):
    return 0
  if parts[0] == 'layers':
    stage = int(parts[1])
    if parts[2] == 'downsample':
      return sum(depths[:stage + 1])
    return sum(depths[:stage]) + int(parts[3]) + 1
  return sum(depths) + 1


def layer_scales(params, layer_decay, depths):
  """Per-leaf learning-rate scale layer_decay ** (sum(depths) + 1 - layer_id)."""
  top = sum(depths) + 1
  return jax.tree_util.tree_map_with_path(
      lambda p, _: float(layer_decay) ** (top - swin_layer_id(_name(p), depths)), params)


def scale_by_tree(scales_fn):
  """Multiplies each update leaf by the constant scales_fn(updates) gives it (no state)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda s, u: (u * s).astype(u.dtype), scales_fn(updates),
                        updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _swin(config):
  try:
    return models.is_swin(config.model)
  except (ValueError, AttributeError):
    return False


def create_optimizer(config, trainable_mask=None):
  """The transformation named by config.optimizer (sgd | adamw), see the module docstring.

  Uses config.wd, and config.momentum / config.nesterov for sgd. trainable_mask: bools
  shaped like params (or a prefix of them), False = frozen.
  """
  name, wd = check(config)
  nesterov = bool(config.nesterov)
  swin = _swin(config)
  mask = decay_mask if swin else None
  clip = float(config.get('clip_grad', 0.0) or 0.0)
  simmim = swin and bool(config.get('simmim', False))
  layer_decay = float(config.get('layer_decay', 1.0))

  def inner(learning_rate, momentum):
    if name == 'sgd':
      rule = optax.chain(optax.add_decayed_weights(wd, mask),
                         optax.trace(decay=momentum, nesterov=nesterov),
                         optax.scale_by_learning_rate(learning_rate))
    else:
      rule = optax.chain(scale_by_torch_adam(momentum, ADAMW_BETAS[1], ADAMW_EPS),
                         optax.add_decayed_weights(wd, mask),
                         optax.scale_by_learning_rate(learning_rate))
    if clip > 0:
      rule = optax.chain(optax.clip_by_global_norm(clip), rule)
    if simmim:
      rule = optax.chain(rule, scale_by_tree(
          lambda u: layer_scales(u, layer_decay, swin_depths(u))))
    return optax.multi_transform({'trainable': rule, 'frozen': optax.set_to_zero()},
                                 lambda params: _labels(trainable_mask, params))

  return optax.inject_hyperparams(inner)(learning_rate=0.0,
                                         momentum=default_momentum(config))


def set_hyperparams(opt_state, *, learning_rate, momentum=None):
  """The state with this step's learning rate (and momentum / beta1) for the next update."""
  hyper = dict(opt_state.hyperparams)
  hyper['learning_rate'] = jnp.asarray(learning_rate, hyper['learning_rate'].dtype)
  if momentum is not None:
    hyper['momentum'] = jnp.asarray(momentum, hyper['momentum'].dtype)
  return opt_state._replace(hyperparams=hyper)


def carry_state(old_state, new_state):
  """`new_state` with every array taken from `old_state` where both have the same path.

  Continues the optimizer state across a member boundary (reset_optim_state=False) when
  the frozen set changes: leaves trainable in both keep their buffers/moments, newly
  trainable ones start empty, newly frozen ones drop theirs.
  """
  old = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(old_state)}
  return jax.tree_util.tree_map_with_path(
      lambda k, v: old.get(jax.tree_util.keystr(k), v), new_state)


def step(optimizer, opt_state, grads, params, *, learning_rate, momentum=None):
  """One update: returns (new params, new optimizer state)."""
  opt_state = set_hyperparams(opt_state, learning_rate=learning_rate, momentum=momentum)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
