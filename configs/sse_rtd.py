"""SSE-RTD: SSE with the RTD similarity loss to member 1 on the pooled map
(scripts/byol_sse_rtd.py: beta 0.0316 on map 4, fge_lr = 2 x lr).

python main.py --config configs/sse_rtd.py --config.seed=1
"""

from configs import sse


def get_config():
  c = sse.get_config()
  c.name = 'sse_rtd'
  c.fmap_loss_type = 'RTDLoss'
  c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 0.0316)
  c.which_model_is_regularizer = 'first'
  c.wandb_group = 'BYOL_SSE-RTD=0.0316'
  return c
