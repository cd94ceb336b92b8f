"""Checks a config before anything is written: each problem is one UserError line that says
what is wrong and what to do. The one validation layer of a run's config: the rules of the
optimizer (optim.check), the schedules (schedules.create_learning_rate_fn), the models, the
augmentations and the datasets are called here, not written again."""

import math

from enstransfer_jax import models, optim, schedules
from enstransfer_jax.data import datasets, randaugment
from enstransfer_jax.data.augment import TRANSFORMS
from enstransfer_jax.models.resnet import MODULE_NAMES as FREEZABLE  # ResNet's; see freezable()
from enstransfer_jax.training import wandb_log
from enstransfer_jax.training.plan import ENSEMBLES
from enstransfer_jax.errors import UserError

FMAP_LOSSES = ('RTDLoss', 'MinMaxRTDLoss', 'MSELoss', 'RTDLiteLoss')
REGULARIZERS = ('first', 'pretrain')
DTYPES = ('float32', 'bfloat16', 'float64')  # float64 needs jax_enable_x64 (parity runs)


def resolve(config):
  """The config with the reference's implicit defaults made explicit: an unset fge_epochs
  (0) means `epochs`, as the reference's fge_epochs=None does."""
  if config.fge_epochs or config.num_fge <= 1:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.fge_epochs = config.epochs
  return config


def _fail(msg):
  raise UserError(msg)


def validate(config):
  c = config
  if c.ensemble not in ENSEMBLES:
    _fail(f'ensemble={c.ensemble!r} is unknown; use {", ".join(ENSEMBLES)}')
  for name in ('lr', 'fge_lr', 'warmup_lr', 'wd', 'momentum', 'eta_min', 'wo_beta',
               'prev_ce_beta') + tuple(f'pretrain.{k}' for k in ('lr',)):
    node, key = (c.pretrain, 'lr') if name.startswith('pretrain.') else (c, name)
    if not isinstance(node[key], (int, float)) or not math.isfinite(node[key]):
      _fail(f'{name}={node[key]!r} must be a finite number')
  for name in ('lr', 'fge_lr'):
    if c[name] <= 0:
      _fail(f'{name}={c[name]} must be > 0')
  if c.pretrain.enabled and c.pretrain.lr <= 0:
    _fail(f'pretrain.lr={c.pretrain.lr} must be > 0')
  optim.check(c)  # optimizer, wd, momentum, nesterov
  if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in c.fmap_betas):
    _fail(f'fmap_betas={tuple(c.fmap_betas)} must be 5 finite numbers')
  if c.batch_size < 1 or c.eval_batch_size < 1:
    _fail('batch_size and eval_batch_size must be positive')
  if c.ensemble == 'sse' and c.num_fge > 1:
    if c.fge_epochs < 1:
      _fail(f'num_fge={c.num_fge} needs fge_epochs >= 1 (got {c.fge_epochs})')
    if c.fge_epochs <= c.fge_warmup_epochs:
      _fail(f'fge_epochs={c.fge_epochs} must be greater than fge_warmup_epochs='
            f'{c.fge_warmup_epochs}')
  if c.ensemble == 'local_de' and c.num_members < 1:
    _fail(f'num_members={c.num_members} must be at least 1 for local_de')
  if c.ensemble == 'global_de' and len(c.ckpts) < 1:
    _fail('ensemble=global_de needs ckpts: one pre-trained checkpoint per member, e.g. '
          "--config.ckpts='(\"a.pt\", \"b.pt\")'")
  if len(c.fmap_betas) != 5:
    _fail(f'fmap_betas has {len(c.fmap_betas)} values; it needs 5 (layer1, layer2, layer3, '
          'layer4, pooled)')
  if c.fmap_loss_type not in FMAP_LOSSES:
    _fail(f'fmap_loss_type={c.fmap_loss_type!r} is unknown; use one of {", ".join(FMAP_LOSSES)}')
  if c.which_model_is_regularizer not in REGULARIZERS:
    _fail(f'which_model_is_regularizer={c.which_model_is_regularizer!r} is unknown; use first '
          'or pretrain')
  names = freezable(c)
  unknown = [name for name in c.freeze_layers if name not in names]
  if unknown:
    _fail(f'freeze_layers has unknown module {unknown[0]!r}; modules of {c.model} are '
          f'{", ".join(names)}')
  stages = sum(name.startswith('layers.') for name in names)
  if stages and any(c.fmap_betas[stages:4]):
    _fail(f'fmap_betas={tuple(c.fmap_betas)}: {c.model} has {stages} stages, so slots '
          f'{stages}..3 hold no feature map; set their betas to 0')
  _validate_recipe(c)
  if c.init_scheme not in ('torch', 'torchvision'):
    _fail(f"init_scheme={c.init_scheme!r} is unknown; use torch or torchvision")
  if c.get('class_subset') and len(tuple(c.class_subset)) < 2:
    _fail(f'class_subset={tuple(c.class_subset)} keeps one class: a classifier needs at least '
          'two (e.g. class_subset=(5, 6)), or () for every class')
  if c.dtype not in DTYPES:
    _fail(f'dtype={c.dtype!r} is unknown; use float32, bfloat16 or float64')
  if not isinstance(c.get('remat', False), bool):
    _fail(f'remat={c.remat!r} must be True or False')
  if c.get('remat', False) and models.is_swin(c.model):
    _fail(f'remat=True is implemented for the ResNets only, not {c.model}; set remat=False')
  if c.dtype == 'float64':
    import jax  # pylint: disable=g-import-not-at-top
    if not jax.config.jax_enable_x64:
      _fail("dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (or "
            "jax.config.update('jax_enable_x64', True)) before the run")
  if c.transform_name.lower() not in TRANSFORMS:
    _fail(f'transform_name={c.transform_name!r} is unknown; use one of {", ".join(TRANSFORMS)}')
  if c.get('data_workers', 0) < 0:
    _fail(f'data_workers={c.data_workers} must be >= 0 (0 = one thread per core)')
  if c.grad_accum_steps < 1 or c.batch_size % c.grad_accum_steps:
    _fail(f'grad_accum_steps={c.grad_accum_steps} must be >= 1 and divide batch_size='
          f'{c.batch_size}')
  if c.wandb_mode not in wandb_log.MODES:
    _fail(f'wandb_mode={c.wandb_mode!r} is unknown; use {", ".join(wandb_log.MODES[:-1])} or '
          f'{wandb_log.MODES[-1]}')
  if c.dataset not in datasets.DATASETS:
    _fail(f'dataset={c.dataset!r} is unknown; use one of {", ".join(sorted(datasets.DATASETS))}')
  schedules.create_learning_rate_fn(c, 100)  # the scheduler's own checks (epochs, warmups)
  check_checkpoints(c)


def checkpoint_paths(config):
  """The pre-trained checkpoints the run reads, one per member start ('' = from scratch):
  config.ckpts for Global DE, else config.ckpt. With pretrain.enabled the run writes config.ckpt
  itself (experiment._pretrain) before it reads it."""
  if config.ensemble == 'global_de':
    return list(config.ckpts)
  return [config.ckpt or '']


def check_checkpoints(config):
  """Every pre-trained checkpoint the run will read exists (before anything is written)."""
  import os  # pylint: disable=g-import-not-at-top
  if config.pretrain.enabled:
    return
  paths = checkpoint_paths(config)
  missing = [path for path in paths if path and not os.path.exists(path)]
  if len(missing) > 1 or (missing and config.ensemble == 'global_de'):
    raise FileNotFoundError(
        f'{len(missing)} of the {len(paths)} pre-trained checkpoints do not exist: '
        f'{", ".join(missing)}; convert them with convert_byol.py or list only those you have '
        'in --config.ckpts')
  if missing:
    raise FileNotFoundError(
        f'pre-trained checkpoint {missing[0]} does not exist; convert a PyTorch one with: '
        'python convert_byol.py IN.pt OUT_DIR, then pass --config.ckpt=OUT_DIR (or ckpt=\'\' '
        'to train from scratch)')


def freezable(config):
  """Top-level module names of config.model in forward order (freeze_layers takes them)."""
  try:
    if not models.is_swin(config.model):
      return FREEZABLE
    return models.module_names(models.create_model(
        config.model, 2, width=config.width, image_size=config.image_size))
  except ValueError as err:
    _fail(f'model={config.model!r} (width {config.width}, image_size {config.image_size}): '
          f'{err}')


def _validate_recipe(c):
  """The Swin recipe's fields: smoothing, clipping, layer decay, Mixup / CutMix, augment."""
  for name in ('label_smoothing', 'clip_grad', 'layer_decay'):
    if not isinstance(c[name], (int, float)) or not math.isfinite(c[name]) or c[name] < 0:
      _fail(f'{name}={c[name]!r} must be a finite number >= 0')
  if c.label_smoothing >= 1:
    _fail(f'label_smoothing={c.label_smoothing} must be in [0, 1)')
  a = c.aug
  for name in ('mixup', 'cutmix', 'mixup_prob', 'mixup_switch_prob', 'reprob', 'color_jitter'):
    if not isinstance(a[name], (int, float)) or not math.isfinite(a[name]) or a[name] < 0:
      _fail(f'aug.{name}={a[name]!r} must be a finite number >= 0')
  if a.mixup_mode != 'batch' and (a.mixup > 0 or a.cutmix > 0):
    _fail(f"aug.mixup_mode={a.mixup_mode!r} is not implemented; use 'batch' (the Swin configs')")
  if c.transform_name.lower() == 'swin_imagenet':
    if str(a.auto_augment).lower() == 'none':
      if a.color_jitter > 0:
        _fail('aug.color_jitter without RandAugment is not implemented (timm applies it only '
              'then); set aug.color_jitter=0 or aug.auto_augment=rand-m9-mstd0.5-inc1')
    else:
      randaugment.parse(a.auto_augment)
    if a.reprob > 0 and (a.remode != 'pixel' or a.recount != 1):
      _fail(f'aug.remode={a.remode!r} aug.recount={a.recount}: only pixel mode with one box '
            'is implemented')


def frozen_prefix(freeze_layers, names=FREEZABLE):
  """The last module of the longest frozen prefix of the network (stop gradients after it);
  `names`: the model's modules in forward order (freezable())."""
  last = None
  for name in names:
    if name not in freeze_layers:
      break
    last = name
  return last
