"""StarSSE-WO as the thesis ran it: StarSSE with weight orthogonalisation, wo_beta 10,
fge_lr = 2 x lr (scripts/byol_starsse_wo.py). Members train one after another; the term
(cos^2 to a randomly drawn earlier member other than member 1) is computed and logged but has
no gradient, as in the reference (wo_gradient=False), so the update is StarSSE's. The method
with a gradient: configs/starsse_wo_grad.py.

python main.py --config configs/starsse_wo.py --config.seed=1
"""

from configs import starsse


def get_config():
  c = starsse.get_config()
  c.name = 'starsse_wo'
  c.fge_lr = 2 * c.lr
  c.wo_beta = 10.0
  c.wo_gradient = False
  c.wandb_group = 'BYOL_StarSSE-WO=10'
  return c
