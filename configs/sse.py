"""Snapshot Ensemble (SSE) of 5 members from BYOL ResNet-50 on CIFAR-100 (scripts/byol_sse.py).

Member 1 trains 25 epochs; members 2..5 each continue from the previous one for 12 epochs
with the cyclic cosine schedule peaking at fge_lr = 2 x lr.

python main.py --config configs/sse.py --config.seed=1
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = 'sse'
  c.scheduler = 'cosine+warmup_cosine'
  c.epochs = 25
  c.num_fge = 5
  c.fge_epochs = 12  # int(0.5 * epochs) as in the reference scripts
  c.fge_lr = 2 * c.lr
  c.fge_warmup_epochs = 0
  c.star_fge = False
  c.wandb_group = 'BYOL_SSE'
  return c
