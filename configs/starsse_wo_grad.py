"""StarSSE-WO as intended: StarSSE with weight orthogonalisation whose term has a gradient
(wo_gradient=True), wo_beta 10, fge_lr = 2 x lr. No reference script ran this: in
scripts/byol_starsse_wo.py the term has no gradient (configs/starsse_wo.py reproduces that).

python main.py --config configs/starsse_wo_grad.py --config.seed=1
"""

from configs import starsse_wo


def get_config():
  c = starsse_wo.get_config()
  c.name = 'starsse_wo_grad'
  c.wo_gradient = True
  c.wandb_group = 'BYOL_StarSSE-WO=10-grad'
  return c
