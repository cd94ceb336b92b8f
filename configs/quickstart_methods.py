"""Quickstart variants of the thesis's methods, on digits, CPU, a few minutes each.

python main.py --config configs/quickstart_methods.py:sse_rtd
(variants: sse_rtd, sse_mse, starsse_wo, starsse_ce, freeze_starsse)
"""

from configs import quickstart

VARIANTS = ('sse_rtd', 'sse_mse', 'starsse_wo', 'starsse_ce', 'freeze_starsse')


def get_config(variant='sse_rtd'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown quickstart variant {variant!r}; use one of {", ".join(VARIANTS)}')
  c = quickstart.get_config()
  c.name = f'quickstart_{variant}'
  c.wandb_group = f'Quickstart_{variant}'
  if variant in ('sse_rtd', 'sse_mse'):
    c.star_fge = False
    c.fge_lr = 2 * c.lr
    c.fmap_loss_type = 'RTDLoss' if variant == 'sse_rtd' else 'MSELoss'
    c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 0.0316 if variant == 'sse_rtd' else 20.0)
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
