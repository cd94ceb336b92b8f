"""One fine-tuning of BYOL ResNet-50 on CIFAR-100 (the reference's byol_single.py).

python main.py --config configs/single.py --config.seed=1
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = 'single'
  c.epochs = 25
  c.scheduler = 'cosine'
  c.wandb_group = 'BYOL_Baseline'
  return c
