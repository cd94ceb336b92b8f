"""StarSSE of 5 members from BYOL ResNet-50 on CIFAR-100 (scripts/byol_starsse.py).

Member 1 trains 25 epochs; members 2..5 each restart from member 1 for 12 epochs with the
cyclic cosine schedule peaking at fge_lr = 4 x lr. Members 2..5 train in parallel.

python main.py --config configs/starsse.py --config.seed=1 --config.ckpt=checkpoints/byol-1
"""

from configs import sse


def get_config():
  c = sse.get_config()
  c.name = 'starsse'
  c.star_fge = True
  c.fge_lr = 4 * c.lr
  c.wandb_group = 'BYOL_StarSSE'
  return c
