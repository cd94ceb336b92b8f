"""Local deep ensemble: 5 independent fine-tunings of one BYOL checkpoint, one seed each.

python main.py --config configs/local_de.py --config.seed=1
"""

from configs import single


def get_config():
  c = single.get_config()
  c.name = 'local_de'
  c.ensemble = 'local_de'
  c.num_members = 5
  c.wandb_group = 'BYOL_LocalDE'
  return c
