"""StarSSE-MSE: StarSSE with the MSE similarity loss to member 1 on the pooled map
(scripts/byol_starsse_mse.py: beta 10 on map 4, fge_lr = 4 x lr).

python main.py --config configs/starsse_mse.py --config.seed=1
"""

from configs import starsse


def get_config():
  c = starsse.get_config()
  c.name = 'starsse_mse'
  c.fmap_loss_type = 'MSELoss'
  c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 10.0)
  c.which_model_is_regularizer = 'first'
  c.wandb_group = 'BYOL_StarSSE-MSE-beta=10'
  return c
