"""Every method of the thesis on the embedded digits transfer task (CPU; run times: RESULTS.md).

The task is the quickstart's: a small ResNet-18 pre-trained on digits 0-4 (the 'pre-trained
checkpoint'), then each method fine-tunes it on digits 5-9. The thesis fine-tunes 3 seeds
from each of 2 BYOL checkpoints; the task pre-trains ONE model, with the fixed seed
PRETRAIN_SEED, and every method and every seed fine-tunes that one checkpoint: the seeds vary
the fine-tuning alone (its random streams), not the pre-trained model. A method's config is its
thesis config (configs/<method>.py) with the task's fields put over it: what makes the method
(ensemble kind, star_fge, the fge_lr / lr ratio, scheduler, feature-map loss and its beta, WO,
prev-CE, freezing) is kept, the sizes are the task's.
`python -m enstransfer_jax.reproduce --task digits` runs them all over seeds.

The task's settings (task_config) against the quickstart's: width 16 (not 8), batch 32 (not
64), no augmentation (the 'cifar' transform flips digits left-right), ensembles of 5 as in
the thesis's Table 4.1 (not 4). These settings were chosen by the seed-to-seed std of the
StarSSE ensemble accuracy over fine-tuning seeds 0-4 (one shared pre-training and 5 members
spread least), on StarSSE alone: the measured spreads, and the table of every method, are in
RESULTS.md, section "The task's settings and their measured spread".

python main.py --config configs/digits_task.py:sse --config.ckpt=PRETRAINED_DIR
(without ckpt the run pre-trains its own model first, as the quickstart does)
"""

import importlib

from configs import quickstart
from enstransfer_jax.errors import UserError

# The seed of the task's one pre-training on digits 0-4: every method and every fine-tuning
# seed starts from the same checkpoint, as the thesis's 3 seeds of a checkpoint start from
# the same BYOL checkpoint (reproduce --pretrain-seed changes it).
PRETRAIN_SEED = 0

# Method name (the thesis config's `name`) -> the config module it comes from.
METHODS = ('single', 'local_de', 'sse', 'starsse', 'sse_rtd', 'sse_rtd_lite', 'sse_mse',
           'starsse_mse', 'starsse_wo', 'starsse_wo_grad', 'starsse_ce', 'freeze_starsse',
           'starsse_lr2')
# A control that is no method of the thesis: StarSSE with StarSSE-WO's fge_lr (2 x lr) and
# its members trained one after another as WO's are, so StarSSE-WO without gradient (the
# reference) must give the same members.
_CONTROLS = {'starsse_lr2': 'starsse'}
# The pooled-map betas at this task's size where they differ from the thesis config's:
# RTD-Lite's is SSE-RTD's times the median RTD / RTD-Lite ratio measured at n = 64, d = 64
# (configs/sse_rtd_lite.py).
_BETAS = {'sse_rtd_lite': 0.048}
# The task's fields (the quickstart's model, data, sizes and schedule lengths).
_TASK_FIELDS = ('dataset', 'class_subset', 'model', 'width', 'image_size', 'transform_name',
                'batch_size', 'eval_batch_size', 'epochs', 'lr', 'valid_freq', 'log_every_steps',
                'wandb_mode', 'ckpt')


def task_config():
  """The task's shared settings: the quickstart's (StarSSE on digits 5-9 from a model
  pre-trained on 0-4, member 1 15 epochs, later cycles 6 epochs each) with a wider network,
  smaller batches, no augmentation (the quickstart's 'cifar' transform flips digits
  left-right, which turns a 2 into something else) and 5 members: measured spread above and
  in RESULTS.md."""
  c = quickstart.get_config()
  c.width = 16
  c.batch_size = 32
  c.transform_name = 'none'
  c.num_fge = 5  # the thesis's ensembles of 5 (Table 4.1)
  return c


def get_config(method='starsse'):
  if method not in METHODS:
    raise UserError(f'unknown method {method!r} for the digits task; use one of '
                    f'{", ".join(METHODS)}')
  c = importlib.import_module(f'configs.{_CONTROLS.get(method, method)}').get_config()
  task = task_config()
  if method == 'starsse_lr2':
    c.name, c.fge_lr, c.parallel_members = method, 2 * c.lr, False
  ratio = c.fge_lr / c.lr  # the thesis's cyclic peak lr relative to lr
  for field in _TASK_FIELDS:
    c[field] = task[field]
  c.pretrain = task.pretrain
  c.fge_lr = ratio * c.lr
  if c.ensemble == 'local_de':
    c.num_members = task.num_fge  # as many members as the snapshot ensembles
  if c.num_fge > 1:
    c.num_fge, c.fge_epochs = task.num_fge, task.fge_epochs
  if method in _BETAS:
    c.fmap_betas = tuple(_BETAS[method] if b else 0.0 for b in c.fmap_betas)
  c.wandb_group = f'Digits_{method}'
  return c
