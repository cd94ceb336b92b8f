"""StarSSE with the stem, layer1 and layer2 frozen in cycles 2..5 (scripts/byol_freeze_starsse.py,
fge_lr = 4 x lr); the thesis reports 0.74x the training time.

python main.py --config configs/freeze_starsse.py --config.seed=1
"""

from configs import starsse


def get_config():
  c = starsse.get_config()
  c.name = 'freeze_starsse'
  c.freeze_layers = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2')
  c.wandb_group = 'BYOL_FreezeStarSSE_before_layer3_xLR=4'
  return c
