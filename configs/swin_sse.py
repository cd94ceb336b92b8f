"""SSE of 5 Swin-Tiny members on CIFAR-100 (the reference's configs/swin/swin_sse.py).

Member 1 as configs/swin_single.py (102 epochs, linear warm-up 10 epochs, cosine); members
2..5 each continue from the previous one for 102 epochs of cosine from fge_lr = 1e-4
(linear_warmup_cosine+cosine, no warm-up in the cycles).

python main.py --config configs/swin_sse.py --config.seed=1 --config.ckpt=checkpoints/swin-1
"""

from configs import swin_single


def get_config():
  c = swin_single.get_config()
  c.name = 'swin_sse'
  c.scheduler = 'linear_warmup_cosine+cosine'
  c.num_fge = 5
  c.fge_epochs = 102
  c.fge_lr = 1e-4
  c.fge_warmup_epochs = 0
  c.star_fge = False
  return c
