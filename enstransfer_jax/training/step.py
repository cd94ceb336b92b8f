"""The jitted train step of a stack of K members: (state, batch, aux) -> (state, metrics).

  state  TrainState with a leading member axis [K, ...]: params, batch_stats, the optimizer
         state, `step` (each member's global schedule step: batches since the run's start,
         the earlier members' included, as the reference's scheduler counts), `member`
         (1-based member numbers), `sums` (this epoch's metric sums over real samples) and
         `schedule` ({'lr', 'momentum'}: the run's schedules at every step,
         schedules.step_tables), `keys` ({'augment', 'dropout'}: the run's random keys,
         stream_keys; data, not constants, so runs with other seeds share the program).
  batch  {'images': uint8 [K, B, H, W, 3] raw images (augmented here, on the device),
          'labels': int32 [K, B], 'mask': float32 [K, B] (0 for the padding of an epoch's
          last, partial batch), 'new_epoch': bool [K] (empty `sums` before this step)}.
  aux    inputs of the regularisers, shared by the members: 'reg' (variables of the
         feature-map regulariser; one per member, stacked, when `Terms.reg_per_member`), 'wo' (flat parameters of an earlier member), 'prev' (variables of an
         earlier member), 'teacher' (the variables of an ensemble's members, stacked, for
         distillation: enstransfer_jax/distill.py; 'ce' is then (1 - alpha) x CE).

Every batch has the same shape: padded samples count nowhere (loss, accuracy, gradient,
BatchNorm statistics). The learning rate and momentum are the schedules' values at
`state.step`, read in the step from the state's tables, so runs whose schedules differ
(the quickstart's pre-training and fine-tuning) share one compiled step. The loss is
  CE + sum_l fmap_betas[l] fmap_l + wo_beta WO + prev_ce_beta prev-CE (+ distillation)
(the feature-map, weight-orthogonality and previous-member terms of losses/, each
described in its own file); which terms are active is static (a `Terms` value).

The program: `make_train_step(spec, tx)` builds the step from a `StepSpec` alone, a frozen
value built from the config by `StepSpec.from_config` (the model, the terms, the members
trained together, the frozen modules, whether crops come cut from the host, the transform
and sizes, augmentation, label smoothing, Mixup / CutMix, micro-batches and the optimizer's
fields). The step reads nothing else, so two steps with equal specs are the same program and
the engine memoises its programs by the spec.
Random streams: augmentation draws from (seed, 'augment', member, step) (Mixup / CutMix
from the same key folded with mixup.MIX_FOLD), a Swin's drop path from (seed, 'dropout',
member, step), one key per micro-batch (`dropout_key` of the loss).

Targets: integer labels and the cross-entropy as before, unless config.label_smoothing > 0
or config.aug.mixup / config.aug.cutmix > 0: then soft targets (data/mixup.py: smoothed
one-hot, mixed as timm's batch-mode Mixup / CutMix over the real samples of the batch) and
the soft-target cross-entropy -sum(t log softmax); accuracy and prev-CE use the original
labels (the reference takes the argmax of the mixed targets for its accuracy).
"""

import dataclasses
import functools
from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections

from enstransfer_jax import losses, optim
from enstransfer_jax.data import augment, mixup, randaugment
from enstransfer_jax.models import swin
from enstransfer_jax import streams

RTD_TIME = 'rtd_host_seconds'  # a metric that is not part of the loss


@flax.struct.dataclass
class TrainState:
  params: dict
  batch_stats: dict
  opt_state: tuple
  step: jax.Array
  member: jax.Array
  sums: dict
  schedule: dict
  keys: dict

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
  wo_gradient: bool = False
  prev_ce_beta: float = 0.0
  only_negative: bool = False
  stop_gradient_after: Optional[str] = None
  frozen_bn: Tuple[str, ...] = ()
  reg_per_member: bool = False  # aux['reg'] stacked per member (a parallel Global DE's
                                # pre-trained regularisers), else shared
  distill_temperature: float = 0.0  # > 0: distil aux['teacher'] (stacked members) at this T
  distill_alpha: float = 1.0  # weight of the distillation term; 1 - alpha of the CE to labels

  def metric_names(self):
    names = ['ce', 'loss', 'acc']
    names += [f'fmap{i}' for i, b in enumerate(self.fmap_betas) if b]
    if self.fmap_betas and self.fmap_loss_type in ('RTDLoss', 'MinMaxRTDLoss'):
      names.append(RTD_TIME)
    names += ['wo'] * bool(self.wo_beta) + ['prev_ce'] * bool(self.prev_ce_beta)
    names += ['distill'] * bool(self.distill_temperature)
    return tuple(names)


# The config fields optim.create_optimizer reads (StepSpec.optimizer_config hands it only
# these, so a field it starts reading without being listed here fails instead of being
# missed by the program key; tests/test_program_key.py checks the list).
OPTIMIZER_FIELDS = ('optimizer', 'wd', 'momentum', 'nesterov', 'clip_grad', 'simmim',
                    'layer_decay', 'model')


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
  return value


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything the train step (and its optimizer) is built from besides the arrays it takes:
  equal specs give the same program. `from_config` is the one place the step reads a config."""
  model: Any  # the Flax module (a frozen dataclass: architecture, classes, width, dtype, remat)
  terms: Terms = Terms()
  members: int = 1  # members trained together (the vmapped axis)
  frozen: Tuple[str, ...] = ()  # modules the optimizer leaves unchanged
  host_crops: bool = False  # images arrive cut by data/host_pipeline.py: flip and normalise
  transform: str = 'none'  # config.transform_name
  image_size: int = 32
  interpolation: str = 'bilinear'
  randaugment: Optional[Tuple[Any, ...]] = None  # (auto_augment, reprob, remode, recount)
                                                 # of the 'swin_imagenet' transform
  smoothing: float = 0.0  # label smoothing
  mixup: float = 0.0  # Mixup's alpha (0: off)
  cutmix: float = 0.0  # CutMix's alpha (0: off)
  mixup_prob: float = 1.0
  mixup_switch_prob: float = 0.5
  micro_batches: int = 1  # config.grad_accum_steps
  optimizer: Tuple[Tuple[str, Any], ...] = ()  # (field, value) of OPTIMIZER_FIELDS

  @classmethod
  def from_config(cls, config, model, terms=Terms(), *, members=1, frozen=(),
                  host_crops=False):
    a = config.get('aug', {})
    swin_aug = None
    if config.transform_name == 'swin_imagenet':  # timm's RandAugment + random erasing
      swin_aug = (a.auto_augment, float(a.reprob), a.remode, int(a.recount))
    return cls(
        model=model, terms=terms, members=int(members), frozen=tuple(sorted(frozen)),
        host_crops=bool(host_crops), transform=config.transform_name,
        image_size=int(config.image_size), interpolation=config.interpolation,
        randaugment=swin_aug, smoothing=float(config.get('label_smoothing', 0.0)),
        mixup=float(a.get('mixup', 0.0)), cutmix=float(a.get('cutmix', 0.0)),
        mixup_prob=float(a.get('mixup_prob', 1.0)),
        mixup_switch_prob=float(a.get('mixup_switch_prob', 0.5)),
        micro_batches=int(config.grad_accum_steps),
        optimizer=tuple((k, _hashable(config[k])) for k in OPTIMIZER_FIELDS if k in config))

  @property
  def train_transform(self):
    """The transform the step applies to a batch's images (data/augment.py)."""
    return augment.HOST_CROP if self.host_crops else self.transform

  def optimizer_config(self):
    """The optimizer's fields as a ConfigDict, for optim.create_optimizer."""
    return ml_collections.ConfigDict(dict(self.optimizer))


def stream_keys(seed):
  """The step's random keys of a run with this seed (streams.py)."""
  return {s: streams.key(seed, s) for s in ('augment', 'dropout')}


def augment_key(keys, member, step):
  """The augmentation key of one train step: the run's (seed, 'augment') key folded with the
  member, then with the member's global step, so every row of every step of every member
  gets its own draw (an image seen again in a later epoch is drawn anew)."""
  return jax.random.fold_in(jax.random.fold_in(keys['augment'], member), step)


def init_state(variables, opt_state, step, member, terms, schedule, keys):
  """A TrainState of one member (stack them for a stage); the metric sums start at 0 (in
  float64 for float64 parameters, else float32)."""
  wide = jnp.result_type(jnp.float32, *jax.tree_util.tree_leaves(variables['params']))
  return TrainState(variables['params'], variables['batch_stats'], opt_state,
                    jnp.asarray(step, jnp.int32), jnp.asarray(member, jnp.int32),
                    {k: jnp.zeros([], wide) for k in terms.metric_names() + ('count',)},
                    schedule, keys)


def make_init_state(tx, terms):
  """(stacked variables [K, ...], steps [K], members [K], schedule, seed=0) -> TrainState,
  built on the devices by one jitted program (the seed enters as data)."""
  def init(variables, step, member, schedule, keys):
    return init_state(variables, tx.init(variables['params']), step, member, terms, schedule,
                      keys)
  jitted = jax.jit(jax.vmap(init, in_axes=(0, 0, 0, None, None)))

  def build(variables, step, member, schedule, seed=0):
    return jitted(variables, step, member, schedule, stream_keys(seed))
  return build


def _as_duplicates(features, mask):
  """Padded rows replaced by row 0: duplicate points leave RTD / RTD-Lite unchanged."""
  return jnp.where(mask[:, None] > 0, features, features[:1])


def _fmap_loss(terms, reg, cur, mask):
  reg, cur = reg.reshape(reg.shape[0], -1), cur.reshape(cur.shape[0], -1)
  if terms.fmap_loss_type == 'MSELoss':
    return losses.feature_mse(reg, cur, weights=mask), None
  reg, cur = _as_duplicates(reg, mask), _as_duplicates(cur, mask)
  if terms.fmap_loss_type == 'RTDLiteLoss':
    return losses.rtd_lite_loss(reg, cur), None
  mode = 'minmax' if terms.fmap_loss_type == 'MinMaxRTDLoss' else 'minimum'
  return losses.rtd_loss(reg, cur, dim=terms.rtd_dim, card=terms.rtd_card, lp=terms.rtd_lp,
                         mode=mode, return_aux=True)


def _member_loss(model, terms, params, batch_stats, x, labels, targets, dropout_key, mask,
                 weight, aux):
  """`weight` x (masked-mean CE + terms) of one (micro-)batch, and its parts. `targets`: soft
  targets [B, C] (label smoothing, Mixup / CutMix) or None (the CE of the integer `labels`);
  `dropout_key`: a Swin's drop-path key, or None."""
  variables = {'params': params, 'batch_stats': batch_stats}
  rngs = {} if dropout_key is None else {'rngs': {swin.DROPOUT_RNG: dropout_key}}
  (logits, feats), new_state = model.apply(
      variables, x, train=True, mutable=['batch_stats'], mask=mask,
      stop_gradient_after=terms.stop_gradient_after, frozen_bn=terms.frozen_bn, **rngs)
  real = jnp.maximum(jnp.sum(mask), 1.0)
  if targets is None:
    ce = losses.per_sample_cross_entropy(logits, labels)
  else:
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)
  parts = {'ce': jnp.sum(ce * mask) / real}
  if terms.distill_temperature:  # the teacher's members on the same (augmented) images
    teacher = jax.vmap(lambda v: model.apply(v, x, train=False)[0])(aux['teacher'])
    parts['ce'] = (1.0 - terms.distill_alpha) * parts['ce']
    parts['distill'] = terms.distill_alpha * losses.distillation_loss(
        logits, teacher, terms.distill_temperature, weights=mask)
  if terms.fmap_betas:
    _, reg_feats = model.apply(aux['reg'], x, train=False)
    for i, beta in enumerate(terms.fmap_betas):
      if beta:
        value, extra = _fmap_loss(terms, jax.lax.stop_gradient(reg_feats[i]), feats[i], mask)
        parts[f'fmap{i}'] = beta * value
        if extra is not None:
          parts[RTD_TIME] = parts.get(RTD_TIME, 0.0) + jax.lax.stop_gradient(extra[RTD_TIME])
  if terms.wo_beta:
    w = params if terms.wo_gradient else jax.lax.stop_gradient(params)
    parts['wo'] = terms.wo_beta * losses.weight_orthogonality(w, aux['wo'])
  if terms.prev_ce_beta:
    prev_logits, _ = model.apply(aux['prev'], x, train=False)
    parts['prev_ce'] = terms.prev_ce_beta * losses.prev_ce(
        logits, jax.lax.stop_gradient(prev_logits), labels, terms.only_negative, weights=mask)
  parts['loss'] = sum(v for k, v in parts.items() if k != RTD_TIME)
  parts['acc'] = jnp.sum((jnp.argmax(logits, -1) == labels) * mask) / real
  parts = {k: v if k == RTD_TIME else v * weight for k, v in parts.items()}
  return parts['loss'], (parts, new_state['batch_stats'])


def make_train_step(spec: StepSpec, tx):
  """Returns the jitted multi-member train step (state donated) that `spec` describes; `tx`:
  the optimizer (the engine builds it from spec.optimizer_config() and spec.frozen)."""
  model, terms = spec.model, spec.terms
  aug = functools.partial(augment.train_transform, transform=spec.train_transform,
                          image_size=spec.image_size, interpolation=spec.interpolation)
  if spec.randaugment is not None and not spec.host_crops:
    auto_augment, reprob, remode, recount = spec.randaugment
    aug = functools.partial(randaugment.swin_train_transform, image_size=spec.image_size,
                            interpolation=spec.interpolation, auto_augment=auto_augment,
                            reprob=reprob, remode=remode, recount=recount)
  dropout = isinstance(model, swin.SwinTransformer)
  mix = dict(smoothing=spec.smoothing, mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix,
             prob=spec.mixup_prob, switch_prob=spec.mixup_switch_prob)
  soft = spec.smoothing > 0 or spec.mixup > 0 or spec.cutmix > 0
  grad_fn = jax.grad(functools.partial(_member_loss, model, terms), has_aux=True)
  n_micro = spec.micro_batches

  def gradients(state, x, labels, targets, dropout_keys, mask, aux):
    """Gradient of the mean loss over the real samples, in n_micro micro-batches. Train-mode
    BN normalises each micro-batch with its own statistics and updates the running ones
    micro-batch after micro-batch, as PyTorch accumulation does. dropout_keys: None or one
    key per micro-batch."""
    real = jnp.maximum(jnp.sum(mask), 1.0)
    if n_micro == 1:
      key = None if dropout_keys is None else dropout_keys[0]
      grads, (parts, stats) = grad_fn(state.params, state.batch_stats, x, labels, targets, key,
                                      mask, 1.0, aux)
      return grads, parts, stats
    split = lambda a: a.reshape(n_micro, a.shape[0] // n_micro, *a.shape[1:])

    def body(carry, micro):
      grads, stats = carry
      xm, ym, tm, km, mm = micro
      g, (parts, stats) = grad_fn(state.params, stats, xm, ym, tm, km, mm,
                                  jnp.sum(mm) / real, aux)
      return (jax.tree_util.tree_map(jnp.add, grads, g), stats), parts

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    micro = (split(x), split(labels), None if targets is None else split(targets),
             dropout_keys, split(mask))
    (grads, stats), parts = jax.lax.scan(body, (zeros, state.batch_stats), micro)
    return grads, {k: v.sum() for k, v in parts.items()}, stats

  def one(state, batch, aux):
    key = augment_key(state.keys, state.member, state.step)
    x = aug(key, batch['images'])
    mask, labels = batch['mask'], batch['labels']
    targets = dropout_keys = None
    if soft:
      x, targets = mixup.mix(jax.random.fold_in(key, mixup.MIX_FOLD), x, labels, mask,
                             model.num_classes, **mix)
    if dropout:  # one key per micro-batch
      k = jax.random.fold_in(jax.random.fold_in(state.keys['dropout'], state.member),
                             state.step)
      dropout_keys = jax.random.split(k, n_micro)
    grads, parts, batch_stats = gradients(state, x, labels, targets, dropout_keys, mask, aux)
    lr = state.schedule['lr'][state.step]
    params, opt_state = optim.step(tx, state.opt_state, grads, state.params, learning_rate=lr,
                                   momentum=state.schedule['momentum'][state.step])
    real = jnp.sum(mask)
    sums = {k: jnp.where(batch['new_epoch'], 0.0, v) for k, v in state.sums.items()}
    sums = {k: v + (real if k == 'count' else parts[k] * real) for k, v in sums.items()}
    metrics = dict(parts, lr=lr)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                         step=state.step + 1, sums=sums), metrics

  aux_axes = {'reg': 0} if terms.reg_per_member else None
  if terms.reg_per_member:  # in_axes must name every key of aux
    aux_axes.update({k: None for k, on in (('wo', terms.wo_beta),
                                            ('prev', terms.prev_ce_beta)) if on})
  return jax.jit(jax.vmap(one, in_axes=(0, 0, aux_axes)), donate_argnums=(0,))
