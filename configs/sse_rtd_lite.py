"""SSE-RTD-Lite: configs/sse_rtd.py with the RTD-Lite loss (computed on the device) in place
of the exact RTD, on the pooled map, to member 1.

python main.py --config configs/sse_rtd_lite.py --config.seed=1

Beta: SSE-RTD's 0.0316 times the ratio RTD / RTD-Lite of the two loss values on the same
features, so the term starts cycle 2 at the size SSE-RTD's does. At the start of cycle 2 the
current model is member 1 itself, drifting away from it; on ReLU features of rank-16 latent
factors, n = 256, d = 2048 (the batch and pooled width of this config), with the current
features' latent noise from 0.05 to 0.25 the ratio is 0.78 to 0.87 (median 0.82; it falls
to 0.42 at noise 1, where the exact RTD's 50 kept pairs saturate):
python bench/bench_rtd.py --lite --n 256 --d 2048 (agreement table), 2026-11-29.
0.0316 x 0.82 = 0.026. At the quickstart's size (n = 64, d = 64) the same measurement gives
a median ratio of 1.52, i.e. beta 0.048 there.
"""

from configs import sse


def get_config():
  c = sse.get_config()
  c.name = 'sse_rtd_lite'
  c.fmap_loss_type = 'RTDLiteLoss'
  c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 0.026)
  c.which_model_is_regularizer = 'first'
  c.wandb_group = 'BYOL_SSE-RTD-Lite=0.026'
  return c
