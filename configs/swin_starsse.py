"""StarSSE of 5 Swin-Tiny members on CIFAR-100 (the reference's configs/swin/swin_starsse.py).

As configs/swin_sse.py, but members 2..5 each restart from member 1 (and train in parallel):
5 members, 102 + 4 x 102 epochs, lr = fge_lr = 1e-4, wd 0.25, linear_warmup_cosine+cosine.

python main.py --config configs/swin_starsse.py --config.seed=1 --config.ckpt=checkpoints/swin-1
"""

from configs import swin_sse


def get_config():
  c = swin_sse.get_config()
  c.name = 'swin_starsse'
  c.star_fge = True
  return c
