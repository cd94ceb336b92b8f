"""Quickstart variants of the thesis's methods, on digits, CPU, a few minutes each.

python main.py --config configs/quickstart_methods.py:sse_rtd
(variants: sse_rtd, sse_rtd_lite, sse_mse, starsse_wo, starsse_ce, freeze_starsse)
"""

from configs import quickstart
from enstransfer_jax.errors import UserError

VARIANTS = ('sse_rtd', 'sse_rtd_lite', 'sse_mse', 'starsse_wo', 'starsse_ce', 'freeze_starsse')
# RTD-Lite's beta: SSE-RTD's times the ratio RTD / RTD-Lite at this size (configs/sse_rtd_lite.py).
_BETAS = {'sse_rtd': 0.0316, 'sse_rtd_lite': 0.048, 'sse_mse': 20.0}
_LOSSES = {'sse_rtd': 'RTDLoss', 'sse_rtd_lite': 'RTDLiteLoss', 'sse_mse': 'MSELoss'}


def get_config(variant='sse_rtd'):
  if variant not in VARIANTS:
    raise UserError(f'unknown quickstart variant {variant!r}; use one of {", ".join(VARIANTS)}')
  c = quickstart.get_config()
  c.name = f'quickstart_{variant}'
  c.wandb_group = f'Quickstart_{variant}'
  if variant in _LOSSES:
    c.star_fge = False
    c.fge_lr = 2 * c.lr
    c.fmap_loss_type = _LOSSES[variant]
    c.fmap_betas = (0.0, 0.0, 0.0, 0.0, _BETAS[variant])
  elif variant == 'starsse_wo':
    c.fge_lr = 2 * c.lr
    c.wo_beta = 10.0
  elif variant == 'starsse_ce':
    c.fge_lr = 2 * c.lr
    c.prev_ce_beta = -0.1
    c.only_negative = True
  else:
    c.freeze_layers = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2')
  return c
