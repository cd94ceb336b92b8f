"""Quickstart of the Swin recipe on the embedded digits, CPU, a few minutes.

A SwinNano (2 stages, embed 16, window 4, 32 px) is pre-trained on digits 0-4, then a
3-member StarSSE is fine-tuned from it on digits 5-9 with the Swin configs' recipe (AdamW
groups, clipping, label smoothing, Mixup / CutMix, RandAugment, random erasing; at 32 px
the reference crops with RandomCrop(32, padding=4)). Nothing is downloaded.

python main.py --config configs/quickstart_swin.py
"""

from configs import quickstart, swin_single


def get_config():
  c = swin_single.swin_base(quickstart.get_config())
  c.name = 'quickstart_swin'
  c.model = 'SwinNano'
  c.width = 16
  c.image_size = 32
  c.ckpt = ''  # replaced by the pre-training stage
  c.batch_size = 64
  c.epochs = 4
  c.warmup_epochs = 1
  c.lr = 1e-3
  c.wd = 0.05
  c.scheduler = 'linear_warmup_cosine+cosine'
  c.num_fge = 3
  c.fge_epochs = 2
  c.fge_lr = 1e-3
  c.fge_warmup_epochs = 0
  c.star_fge = True
  c.wandb_group = 'Quickstart_Swin'
  c.pretrain.epochs = 6
  c.pretrain.lr = 2e-3
  return c
