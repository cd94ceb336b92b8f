"""Global deep ensemble: one fine-tuning per pre-trained BYOL checkpoint, 5 members
(ens-for-transfer scripts/byol/byol_baseline.py: byol-1000ep-1.pt ... byol-1000ep-5.pt, each
fine-tuned as configs/single.py). The thesis's Global DE row (88.10) is this 5-member ensemble.

python main.py --config configs/global_de.py --config.seed=1
(or --config.ckpts='("checkpoints/byol-1", ..., "checkpoints/byol-5")' for converted dirs)
"""

from configs import single

NUM_CHECKPOINTS = 5


def get_config():
  c = single.get_config()
  c.name = 'global_de'
  c.ensemble = 'global_de'
  c.ckpts = tuple(f'./checkpoints/byol-1000ep-{i}.pt' for i in range(1, NUM_CHECKPOINTS + 1))
  c.wandb_group = 'BYOL_GlobalDE'
  return c
