"""Every config in configs/ against the effective settings of the reference script it stands for.

The table below is written from the reference scripts themselves, not from the configs:
tgritsaev/ens-hse-diploma `scripts/byol_*.py` on top of its `configs/byol/byol_sse.py`,
`byol_starsse.py`, `byol_single.py` and `byol_base.py`, and isadrtdinov/ens-for-transfer
`scripts/byol/byol_baseline.py` (Local / Global DE). Every
thesis script sets `fge_lr = x_lr * lr` and `fge_epochs = int(0.5 * epochs)` = 12 with
lr = 0.05 and epochs = 25. A changed number in a config, or a new config without a row here,
fails this test.
"""

import importlib
import os

import pytest

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs')
NOT_REFERENCE = {'__init__', 'base', 'quickstart', 'quickstart_methods', 'quickstart_swin',
                 'digits_task', 'animals_task', 'sse_rtd_lite'}  # no reference script
# The Swin configs follow the reference's configs/swin/*.py: checked against them in
# tests/test_swin_recipe.py.
NOT_REFERENCE |= {'swin_single', 'swin_sse', 'swin_starsse'}

# Common to every BYOL ResNet-50 -> CIFAR-100 script (configs/byol/byol_base.py, with the
# wd = 1e-4 that byol_single.py, byol_sse.py and byol_starsse.py all set).
COMMON = {
    'dataset': 'cifar100', 'model': 'ImageNetResNet50', 'transform_name': 'imagenet',
    'interpolation': 'bilinear', 'use_test': True, 'batch_size': 256, 'optimizer': 'sgd',
    'lr': 0.05, 'wd': 1e-4, 'momentum': 0.9, 'nesterov': False, 'epochs': 25,
    'reset_optim_state': True, 'ckpt': './checkpoints/byol-1000ep-1.pt',
}
FROZEN_BEFORE_LAYER3 = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2')
FROZEN_BEFORE_LAYER4 = FROZEN_BEFORE_LAYER3 + ('layer3',)
FROZEN_THROUGH_LAYER4 = FROZEN_BEFORE_LAYER4 + ('layer4',)
NO_FREEZE = ()

# Columns: reference, scheduler, num_fge, fge_epochs (None: one model per run, unused),
# fge_lr / lr (None: unused), star_fge, fmap loss and (map index, beta) (None: no fmap loss),
# wo_beta, prev_ce_beta, only_negative, freeze_layers.
COLUMNS = ('reference', 'scheduler', 'num_fge', 'fge_epochs', 'x_lr', 'star_fge', 'fmap',
           'wo_beta', 'prev_ce_beta', 'only_negative', 'freeze_layers')
TABLE = {
    'single': ('ens-hse-diploma configs/byol/byol_single.py (ens-for-transfer the same)',
               'cosine', 1, None, None, False, None, 0.0, 0.0, False, NO_FREEZE),
    'local_de': ('ens-for-transfer scripts/byol/byol_baseline.py (5 seeds of one checkpoint)',
                 'cosine', 1, None, None, False, None, 0.0, 0.0, False, NO_FREEZE),
    'global_de': ('ens-for-transfer scripts/byol/byol_baseline.py (byol-1000ep-1..5.pt)',
                  'cosine', 1, None, None, False, None, 0.0, 0.0, False, NO_FREEZE),
    'sse': ('ens-hse-diploma scripts/byol_sse.py',
            'cosine+warmup_cosine', 5, 12, 2, False, None, 0.0, 0.0, False, NO_FREEZE),
    'starsse': ('ens-hse-diploma scripts/byol_starsse.py',
                'cosine+warmup_cosine', 5, 12, 4, True, None, 0.0, 0.0, False, NO_FREEZE),
    'sse_rtd': ('ens-hse-diploma scripts/byol_sse_rtd.py',
                'cosine+warmup_cosine', 5, 12, 2, False, ('RTDLoss', 4, 0.0316), 0.0, 0.0,
                False, NO_FREEZE),
    'sse_mse': ('ens-hse-diploma scripts/byol_sse_mse.py',
                'cosine+warmup_cosine', 5, 12, 2, False, ('MSELoss', 4, 20.0), 0.0, 0.0, False,
                NO_FREEZE),
    'starsse_mse': ('ens-hse-diploma scripts/byol_starsse_mse.py',
                    'cosine+warmup_cosine', 5, 12, 4, True, ('MSELoss', 4, 10.0), 0.0, 0.0,
                    False, NO_FREEZE),
    'starsse_wo': ('ens-hse-diploma scripts/byol_starsse_wo.py',
                   'cosine+warmup_cosine', 5, 12, 2, True, None, 10.0, 0.0, False, NO_FREEZE),
    'starsse_wo_grad': ('ens-hse-diploma scripts/byol_starsse_wo.py, with the WO gradient',
                        'cosine+warmup_cosine', 5, 12, 2, True, None, 10.0, 0.0, False,
                        NO_FREEZE),
    'starsse_ce': ('ens-hse-diploma scripts/byol_starsse_ce.py',
                   'cosine+warmup_cosine', 5, 12, 2, True, None, 0.0, -0.1, True, NO_FREEZE),
    'freeze_starsse': ('ens-hse-diploma scripts/byol_freeze_starsse.py',
                       'cosine+warmup_cosine', 5, 12, 4, True, None, 0.0, 0.0, False,
                       FROZEN_BEFORE_LAYER3),
    # No script: thesis section 5 and Table 4.1, rows (2) and (3); the frozen-StarSSE script's
    # settings with more of the network frozen.
    'freeze_starsse_layer4': ('ens-hse-diploma thesis Table 4.1 StarSSE (2), no script',
                              'cosine+warmup_cosine', 5, 12, 4, True, None, 0.0, 0.0, False,
                              FROZEN_BEFORE_LAYER4),
    'freeze_starsse_through_layer4': ('ens-hse-diploma thesis Table 4.1 StarSSE (3), no script',
                                      'cosine+warmup_cosine', 5, 12, 4, True, None, 0.0, 0.0,
                                      False, FROZEN_THROUGH_LAYER4),
}
# Fields of one run per member (Local / Global DE) and of the WO gradient switch.
ENSEMBLE = {'single': ('sse', 1), 'local_de': ('local_de', 5), 'global_de': ('global_de', 5)}
WO_GRADIENT = {'starsse_wo': False, 'starsse_wo_grad': True}


def _config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def _config_files():
  return sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))


def test_every_config_has_a_row():
  names = set(_config_files()) - NOT_REFERENCE
  assert names == set(TABLE), (f'configs without a row: {sorted(names - set(TABLE))}; rows '
                               f'without a config: {sorted(set(TABLE) - names)}')


@pytest.mark.parametrize('name', sorted(TABLE))
def test_config_matches_reference(name):
  row = dict(zip(COLUMNS, TABLE[name]))
  c = _config(name)
  where = f'configs/{name}.py vs {row["reference"]}'
  assert c.name == name, where
  for key, want in COMMON.items():
    assert c[key] == want, f'{where}: {key}={c[key]!r}, reference {want!r}'
  assert c.scheduler == row['scheduler'], where
  assert c.num_fge == row['num_fge'], where
  if row['fge_epochs'] is not None:
    effective = c.fge_epochs or c.epochs  # 0 = epochs, the reference's fge_epochs=None
    assert effective == row['fge_epochs'] == int(0.5 * c.epochs), where
    assert c.fge_warmup_epochs == 0, where
  if row['x_lr'] is not None:
    assert c.fge_lr == pytest.approx(row['x_lr'] * c.lr, rel=1e-12), (
        f'{where}: fge_lr={c.fge_lr} is {c.fge_lr / c.lr:g} x lr, reference {row["x_lr"]} x lr')
  assert c.star_fge == row['star_fge'], where
  betas = [0.0] * 5
  if row['fmap'] is not None:
    loss, index, beta = row['fmap']
    betas[index] = beta
    assert c.fmap_loss_type == loss, where
    assert c.which_model_is_regularizer == 'first', where
  assert tuple(c.fmap_betas) == tuple(betas), f'{where}: fmap_betas={tuple(c.fmap_betas)}'
  assert c.wo_beta == row['wo_beta'], where
  assert c.prev_ce_beta == row['prev_ce_beta'], where
  assert c.only_negative == row['only_negative'], where
  assert tuple(c.freeze_layers) == row['freeze_layers'], where
  ensemble, members = ENSEMBLE.get(name, ('sse', None))
  assert c.ensemble == ensemble, where
  if ensemble == 'local_de':
    assert c.num_members == members, where
  if ensemble == 'global_de':
    assert list(c.ckpts) == [f'./checkpoints/byol-1000ep-{i}.pt' for i in range(1, 6)], where


@pytest.mark.parametrize('name', sorted(WO_GRADIENT))
def test_wo_gradient(name):
  """starsse_wo reproduces the thesis (no WO gradient); starsse_wo_grad is the intended method."""
  from configs import base  # pylint: disable=g-import-not-at-top
  assert 'wo_gradient' in base.get_config(), 'configs/base.py lacks the wo_gradient field'
  assert _config(name).wo_gradient is WO_GRADIENT[name]


@pytest.mark.parametrize('name', sorted(TABLE) + ['quickstart', 'sse_rtd_lite'])
def test_config_passes_the_engine_checks(name):
  """Each config is valid for the engine (checkpoint paths blanked: none exist here)."""
  from enstransfer_jax.training import config_check  # pylint: disable=g-import-not-at-top
  c = _config(name)
  c.ckpt = ''
  c.ckpts = ('',) * len(c.ckpts)
  config_check.validate(c)


def test_quickstart_variants_keep_the_reference_ratios():
  """The digits variants keep each method's fge_lr multiple, betas and switches."""
  from configs import quickstart_methods  # pylint: disable=g-import-not-at-top
  for variant in quickstart_methods.VARIANTS:
    q, full = quickstart_methods.get_config(variant), _config(variant)
    assert q.fge_lr / q.lr == pytest.approx(full.fge_lr / full.lr), variant
    for key in ('star_fge', 'fmap_loss_type', 'wo_beta', 'prev_ce_beta', 'only_negative',
                'freeze_layers'):
      if key != 'fmap_loss_type' or any(full.fmap_betas):
        assert q[key] == full[key], (variant, key)
    if variant == 'sse_rtd_lite':  # RTD-Lite's beta depends on n and d: measured per size
      assert tuple(q.fmap_betas) == (0.0, 0.0, 0.0, 0.0, 0.048)  # configs/sse_rtd_lite.py
    else:
      assert tuple(q.fmap_betas) == tuple(full.fmap_betas), variant


# The same --config.FIELD=VALUE arguments through main.py (split_overrides, then
# configs.apply_overrides) and through ml_collections' own config flags.
OVERRIDE_ARGV = ['--config.ckpts', 'a.pt', '--config.ckpts', 'b.pt', '--config.class_subset=(5, 6)',
                 '--config.epochs', '3', '--config.lr=1', '--config.overwrite', '--config.name=7',
                 '--config.pretrain.epochs=2', '--config.freeze_layers=conv1', '--noconfig.star_fge',
                 '--config.wd=-1e-3', '--config.fmap_betas=(0, 1, 2.5, 0, 0)', '--config.seed', '-4',
                 '--config.aug.mixup=0.5', '--config.scheduler', 'cosine']


def test_overrides_parse_as_config_flags(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  import configs  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  argv = ['main.py', '--config', os.path.join(CONFIG_DIR, 'starsse.py'), *OVERRIDE_ARGV]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=values,
                                           lock_config=True)
  monkeypatch.setattr('sys.argv', argv)  # config flags read their overrides from sys.argv
  values(argv)
  rest, overrides = main.split_overrides(argv)
  assert rest == argv[:3]
  got = configs.apply_overrides(_config('starsse'), overrides)
  assert got.to_dict() == holder.value.to_dict()
  assert got.ckpts == ('a.pt', 'b.pt') and got.name == '7' and got.star_fge is False
  assert got.lr == 1.0 and isinstance(got.lr, float) and got.seed == -4


def test_override_mistakes_are_one_line():
  import configs  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  for overrides, message in [({'fge_epoch': '3'}, "unknown config key 'fge_epoch': the config has no field 'fge_epoch'; its fields: aug, "),
                             ({'pretrain.lrr': '1'}, "pretrain has no field 'lrr'; its fields: "
                              'class_subset, dataset, enabled, epochs, lr '),
                             ({'epochs': '3.5'}, "--config.epochs=3.5: invalid literal for int"),
                             ({'lr': 'abc'}, "--config.lr=abc: could not convert string to float")]:
    with pytest.raises(UserError) as e:
      configs.apply_overrides(_config('sse'), overrides)
    assert message in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert configs.apply_overrides(_config('sse'), [('compilation_cache_dir', "''")]).compilation_cache_dir == ''
  with pytest.raises(UserError, match="--set 'width' must be FIELD=VALUE"):
    configs.parse_assignments(['width'])


def test_validation_calls_the_optimizer_and_schedule_checks():
  """config_check.validate refuses what optim.check and the schedules refuse, with their
  messages (quickstart's config, checkpoints blanked)."""
  from enstransfer_jax import optim, schedules  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import config_check  # pylint: disable=g-import-not-at-top
  for change in [{'optimizer': 'lamb'}, {'wd': -1.0}, {'momentum': 1.0},
                 {'nesterov': True, 'momentum': 0.0},
                 {'scheduler': 'warmup_cosine', 'warmup_epochs': 99}, {'epochs': 0},
                 {'scheduler': 'cosine+fge', 'num_fge': 1}]:
    c = _config('quickstart')
    c.ckpt = ''
    c.update(change)
    with pytest.raises(ValueError) as want:
      optim.check(c)
      schedules.create_learning_rate_fn(c, 100)
    with pytest.raises(ValueError) as got:
      config_check.validate(c)
    assert str(got.value) == str(want.value), change
