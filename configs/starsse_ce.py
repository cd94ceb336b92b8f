"""StarSSE-CE: StarSSE with the diversity cross-entropy, prev_ce_beta -0.1 on the samples a
random earlier member got wrong (only_negative), fge_lr = 2 x lr (scripts/byol_starsse_ce.py).

python main.py --config configs/starsse_ce.py --config.seed=1
"""

from configs import starsse


def get_config():
  c = starsse.get_config()
  c.name = 'starsse_ce'
  c.fge_lr = 2 * c.lr
  c.prev_ce_beta = -0.1
  c.only_negative = True
  c.wandb_group = 'BYOL_StarSSE-CE-prev_ce_beta=-0.1'
  return c
