"""SSE-RTD-Lite: configs/sse_rtd.py with the RTD-Lite loss (computed on the device) in place
of the exact RTD, on the pooled map, to member 1.

python main.py --config configs/sse_rtd_lite.py --config.seed=1

Beta: SSE-RTD's 0.0316 times the ratio RTD / RTD-Lite of the two loss values on the same
features, so the term starts cycle 2 at the size SSE-RTD's does. At the start of cycle 2 the
current model is member 1 itself, drifting away from it, so the ratio is the one measured at
small drift on features of this config's batch and pooled width (n = 256, d = 2048):
python bench/bench_rtd.py --lite --n 256 --d 2048, its agreement table in BENCHMARKS.md,
section "RTD-Lite against the exact RTD, serial and pooled, CPU", which also derives this
beta (0.026) and the quickstart variant's (configs/quickstart_methods.py) from the ratio.
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
