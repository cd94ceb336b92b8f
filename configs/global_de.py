"""Global deep ensemble: one fine-tuning per pre-trained checkpoint (here the two BYOL ones).

python main.py --config configs/global_de.py --config.seed=1 \
    --config.ckpts='("checkpoints/byol-1", "checkpoints/byol-2")'
"""

from configs import single


def get_config():
  c = single.get_config()
  c.name = 'global_de'
  c.ensemble = 'global_de'
  c.ckpts = ('./checkpoints/byol-1000ep-1.pt', './checkpoints/byol-1000ep-2.pt')
  c.wandb_group = 'BYOL_GlobalDE'
  return c
