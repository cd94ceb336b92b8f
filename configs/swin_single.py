"""One fine-tuning of Swin-Tiny on CIFAR-100 (the reference's configs/swin/swin_single.py).

The reference's Swin recipe (configs/swin/swin_base.py, utils/optimizers.py,
data/swin_transforms.py): AdamW without decay on norms, biases and position tables, lr
1e-4, wd 0.25, linear warm-up from 5e-7 over int(0.1 x epochs) = 10 epochs then cosine,
gradient clipping at norm 5, label smoothing 0.1, Mixup 0.8 / CutMix 1.0 (switch 0.5,
batch mode), timm's RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25 at 224 px with
bicubic resampling, drop path 0.1, the last partial batch of every epoch dropped.

python convert_byol.py --arch SwinTiny swin_tiny_patch4_window7_224.pth checkpoints/swin-1
python main.py --config configs/swin_single.py --config.seed=1 --config.ckpt=checkpoints/swin-1
"""

from configs import base


def swin_base(c):
  """The fields of the reference's SwinBaseConfig that differ from configs/base.py."""
  c.model = 'SwinTiny'
  c.width = 96  # embed dim
  c.ckpt = './checkpoints/swin_1.pth'
  c.transform_name = 'swin_imagenet'
  c.interpolation = 'bicubic'
  c.image_size = 224
  c.batch_size = 256
  c.drop_last = True  # DataLoader(..., drop_last=True): floor(n / 256) steps per epoch
  c.optimizer = 'adamw'
  c.lr = 5e-3
  c.wd = 0.05
  del c['warmup_lr']  # base.py ties warmup_lr to lr: assigning would set lr as well
  c.warmup_lr = 5e-7
  c.scheduler = 'linear_warmup_cosine'
  c.clip_grad = 5.0
  c.label_smoothing = 0.1
  c.simmim = False
  c.layer_decay = 0.85
  c.aug.auto_augment = 'rand-m9-mstd0.5-inc1'
  c.aug.color_jitter = 0.4
  c.aug.reprob = 0.25
  c.aug.remode = 'pixel'
  c.aug.recount = 1
  c.aug.mixup = 0.8
  c.aug.cutmix = 1.0
  c.aug.mixup_prob = 1.0
  c.aug.mixup_switch_prob = 0.5
  c.aug.mixup_mode = 'batch'
  c.wandb_group = 'Swin_Test'
  return c


def get_config():
  c = swin_base(base.get_config())
  c.name = 'swin_single'
  c.epochs = 102
  c.warmup_epochs = int(c.epochs * 0.1)  # the reference's warmup_coef
  c.lr = 1e-4
  c.wd = 0.25
  c.wandb_group = 'Swin_Baseline'
  return c
