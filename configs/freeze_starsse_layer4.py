"""StarSSE with the stem and layer1..layer3 frozen in cycles 2..5: the thesis's "StarSSE (2)"
(Table 4.1, x0.6 the training time of StarSSE; section 5). The thesis publishes no script for
it; everything but freeze_layers is configs/freeze_starsse.py's (fge_lr = 4 x lr: the thesis
finds the best cycle lr between 3x and 5x for all three freezings).

python main.py --config configs/freeze_starsse_layer4.py --config.seed=1
"""

from configs import freeze_starsse


def get_config():
  c = freeze_starsse.get_config()
  c.name = 'freeze_starsse_layer4'
  c.freeze_layers = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3')
  c.wandb_group = 'BYOL_FreezeStarSSE_before_layer4_xLR=4'
  return c
