"""Quickstart on the embedded digits data, CPU, a few minutes, through the real code path.

A small ResNet-18 (width 8) is first pre-trained on digits 0-4 (the 'pre-trained checkpoint'),
then StarSSE with 4 members is fine-tuned from it on digits 5-9, and the ensemble table is
printed. Nothing is downloaded.

python main.py --config configs/quickstart.py
"""

from configs import starsse


def get_config():
  c = starsse.get_config()
  c.name = 'quickstart_starsse'
  c.dataset = 'digits'
  c.class_subset = (5, 6, 7, 8, 9)
  c.model = 'ResNet18'
  c.width = 8
  c.image_size = 32
  c.transform_name = 'cifar'
  c.batch_size = 64
  c.eval_batch_size = 256
  c.ckpt = ''  # replaced by the pre-training stage below
  c.epochs = 15
  c.num_fge = 4
  c.fge_epochs = 6
  c.lr = 0.05
  c.fge_lr = 4 * c.lr
  c.valid_freq = 0
  c.log_every_steps = 5
  c.wandb_mode = 'disabled'
  c.wandb_group = 'Quickstart_StarSSE'
  c.pretrain.enabled = True
  c.pretrain.class_subset = (0, 1, 2, 3, 4)
  c.pretrain.epochs = 20
  c.pretrain.lr = 0.1
  return c
