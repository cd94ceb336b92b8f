"""SSE-MSE: SSE with the MSE similarity loss to member 1 on the pooled map
(scripts/byol_sse_mse.py: beta 20 on map 4, fge_lr = 2 x lr).

python main.py --config configs/sse_mse.py --config.seed=1
"""

from configs import sse


def get_config():
  c = sse.get_config()
  c.name = 'sse_mse'
  c.fmap_loss_type = 'MSELoss'
  c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 20.0)
  c.which_model_is_regularizer = 'first'
  c.wandb_group = 'BYOL_SSE-MSE=20'
  return c
