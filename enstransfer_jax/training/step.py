"""The jitted train and eval steps, for a stack of K members on a leading axis.

train_step(state, images, labels, member_ids, member_steps, lrs, moms, aux) -> (state, metrics)
  state        TrainState with a leading member axis [K, ...]
  images       uint8 [K, B, H, W, 3] raw images (augmented here, on the device)
  labels       int32 [K, B]
  member_ids   int32 [K] 1-based member numbers; with member_steps [K] they seed each
               member's augmentation, so a member sees the same randomness whether it trains
               alone or beside others
  lrs, moms    float32 [K] learning rate and momentum (SGD) / beta1 (AdamW) of each member at
               this step (torch's CyclicLR cycles the momentum too)
  aux          shared, unbatched inputs of the regularisers: 'reg' (variables of the
               feature-map regulariser), 'wo' (flat parameters of an earlier member), 'prev'
               (variables of an earlier member)
The loss is cross-entropy plus the active terms (SPEC section 4); which terms are active is
static (a `Terms` value), so each phase of a run compiles once.
"""

import dataclasses
import functools
from typing import Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from enstransfer_jax import losses, optim
from enstransfer_jax.data import augment


@flax.struct.dataclass
class TrainState:
  params: dict
  batch_stats: dict
  opt_state: tuple

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


@dataclasses.dataclass(frozen=True)
class Terms:
  """Static description of the loss and of the frozen part of the network."""
  fmap_betas: Tuple[float, ...] = ()  # empty: no feature-map loss
  fmap_loss_type: str = 'RTDLoss'
  rtd_dim: int = 1
  rtd_card: int = 50
  rtd_lp: float = 1.0
  wo_beta: float = 0.0
  prev_ce_beta: float = 0.0
  only_negative: bool = False
  stop_gradient_after: Optional[str] = None
  frozen_bn: Tuple[str, ...] = ()


def _fmap_loss(terms, reg, cur):
  reg, cur = reg.reshape(reg.shape[0], -1), cur.reshape(cur.shape[0], -1)
  if terms.fmap_loss_type == 'MSELoss':
    return losses.feature_mse(reg, cur), None
  mode = 'minmax' if terms.fmap_loss_type == 'MinMaxRTDLoss' else 'minimum'
  return losses.rtd_loss(reg, cur, dim=terms.rtd_dim, card=terms.rtd_card, lp=terms.rtd_lp,
                         mode=mode, return_aux=True)


def _member_loss(model, terms, params, batch_stats, x, labels, aux):
  variables = {'params': params, 'batch_stats': batch_stats}
  (logits, feats), new_state = model.apply(
      variables, x, train=True, mutable=['batch_stats'],
      stop_gradient_after=terms.stop_gradient_after, frozen_bn=terms.frozen_bn)
  parts = {'ce': losses.cross_entropy(logits, labels)}
  if terms.fmap_betas:
    _, reg_feats = model.apply(aux['reg'], x, train=False)
    for i, beta in enumerate(terms.fmap_betas):
      if beta:
        value, extra = _fmap_loss(terms, jax.lax.stop_gradient(reg_feats[i]), feats[i])
        parts[f'fmap{i}'] = beta * value
        if extra is not None:
          parts.setdefault('rtd_host_seconds', 0.0)
          parts['rtd_host_seconds'] += jax.lax.stop_gradient(extra['rtd_host_seconds'])
  if terms.wo_beta:
    parts['wo'] = terms.wo_beta * losses.weight_orthogonality(params, aux['wo'])
  if terms.prev_ce_beta:
    prev_logits, _ = model.apply(aux['prev'], x, train=False)
    parts['prev_ce'] = terms.prev_ce_beta * losses.prev_ce(
        logits, jax.lax.stop_gradient(prev_logits), labels, terms.only_negative)
  loss = sum(v for k, v in parts.items() if k != 'rtd_host_seconds')
  return loss, (parts, logits, new_state['batch_stats'])


def make_train_step(model, tx, config, terms: Terms):
  """Returns the jitted multi-member train step (state donated)."""
  aug = functools.partial(augment.train_transform, transform=config.transform_name,
                          image_size=config.image_size, interpolation=config.interpolation)
  base_key = jax.random.PRNGKey(config.seed)

  def one(state, images, labels, member_id, member_step, lr, mom, aux):
    key = jax.random.fold_in(jax.random.fold_in(base_key, member_id), member_step)
    x = aug(key, images)
    grad_fn = jax.grad(functools.partial(_member_loss, model, terms), has_aux=True)
    grads, (parts, logits, batch_stats) = accumulate(grad_fn, state, x, labels, aux)
    direction, opt_state = tx.update(grads, state.opt_state, state.params, momentum=mom)
    params = optim.apply_direction(state.params, direction, lr)
    metrics = dict(parts)
    metrics['loss'] = sum(v for k, v in parts.items() if k != 'rtd_host_seconds')
    metrics['acc'] = jnp.mean(jnp.argmax(logits, -1) == labels)
    return TrainState(params, batch_stats, opt_state), metrics

  def accumulate(grad_fn, state, x, labels, aux):
    """Mean gradient over config.grad_accum_steps micro-batches (one pass when it does not
    divide the batch). Train-mode BN normalises each micro-batch with its own statistics and
    updates the running ones micro-batch after micro-batch, as PyTorch accumulation does."""
    n = config.grad_accum_steps
    if n == 1 or x.shape[0] % n:
      return grad_fn(state.params, state.batch_stats, x, labels, aux)
    xs = x.reshape(n, x.shape[0] // n, *x.shape[1:])
    ys = labels.reshape(n, -1)

    def body(carry, micro):
      grads, batch_stats = carry
      g, (parts, logits, batch_stats) = grad_fn(state.params, batch_stats, *micro, aux)
      return (jax.tree_util.tree_map(jnp.add, grads, g), batch_stats), (parts, logits)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    (grads, batch_stats), (parts, logits) = jax.lax.scan(body, (zeros, state.batch_stats),
                                                         (xs, ys))
    grads = jax.tree_util.tree_map(lambda g: g / n, grads)
    parts = {k: (v.sum() if k == 'rtd_host_seconds' else v.mean()) for k, v in parts.items()}
    return grads, (parts, logits.reshape(-1, logits.shape[-1]), batch_stats)

  stacked = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, 0, None))
  return jax.jit(stacked, donate_argnums=(0,))


def make_eval_step(model, config):
  """Jitted: (stacked variables [K, ...], uint8 images [B, H, W, 3]) -> probs [K, B, C]."""
  prep = functools.partial(augment.eval_transform, transform=config.transform_name,
                           image_size=config.image_size, interpolation=config.interpolation)

  def one(variables, x):
    logits, _ = model.apply(variables, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), -1)

  def stacked(variables, images):
    return jax.vmap(one, in_axes=(0, None))(variables, prep(images))

  return jax.jit(stacked)
