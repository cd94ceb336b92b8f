"""Where members start, and what the regularisers read.

One documented order: a run resumed from its work dir continues from the progress checkpoint
(resume.py); otherwise member 1 (and every Local / Global DE member) starts from its
pre-trained checkpoint, with a new `num_classes` head drawn from (seed, 'head', member) when
the checkpoint's head has another size, or from scratch (`ckpt=''`). From scratch with
init_scheme 'torch' (the default) a ResNet's parameters are drawn by torch's own generator as
the reference draws them (models/torch_init.torch_drawn_variables): member 1 after
torch.manual_seed(seed), so the reference's run of the same seed starts from the same weights,
bit for bit; member k >= 2 after torch.manual_seed of a number drawn from (seed, 'init', k).
With 'torchvision' (and for other models) they come from the stream (seed, 'init', member).
So from-scratch DE members differ; SSE member k starts from
member k-1 and StarSSE member k from member 1 (parameters and BN statistics).

Pre-trained checkpoints are read once, before the work dir is touched (`load_checkpoints`).
"""

import os

import jax
import numpy as np

from enstransfer_jax import checkpoints, models, rundir
from enstransfer_jax.models import resnet, torch_init
from enstransfer_jax.training import config_check
from enstransfer_jax import streams
from enstransfer_jax.errors import UserError


def load_checkpoints(config):
  """{path: host variables} of every pre-trained checkpoint the run reads; one-line errors for
  a missing, unreadable, wrong-architecture, wrong-width or non-finite checkpoint."""
  out = {}
  for path in config_check.checkpoint_paths(config):
    if path and path not in out:
      arch, variables = checkpoints.load_pretrained(path)
      if models.canonical_name(arch) != models.canonical_name(config.model):
        raise UserError(f'checkpoint {path} holds a {arch} but config.model is '
                        f'{config.model}; set --config.model={arch}')
      variables = jax.device_get(dict(variables))
      width = checkpoints.describe(variables).get('width')
      if width is not None and int(width) != int(config.width):
        raise UserError(f'checkpoint {path} holds a {arch} of width {width} but config.width '
                        f'is {config.width}; set --config.width={width}')
      _check_finite_weights(path, variables)
      out[path] = variables
  return out


def _check_finite_weights(path, variables):
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  for key, leaf in flat:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      raise UserError(f'checkpoint {path} holds non-finite weights ({jax.tree_util.keystr(key)} '
                      f'has {int(np.sum(~np.isfinite(leaf)))} NaN or inf values); it is '
                      'damaged: convert or train it again')


def torch_seed(seed, member):
  """torch's seed for a from-scratch member: the run's seed for member 1 (as the reference's
  set_random_seed before it builds its model), a 62-bit draw of (seed, 'init', member) for
  the others (so no member of one run shares its start with a member of another seed's run)."""
  if member == 1:
    return int(seed)
  return int(streams.numpy_rng(seed, 'init', member).integers(2**62))


class Starts:
  """Start variables of each member and the saved members the regularisers read (host)."""

  def __init__(self, config, model, num_classes, pretrained):
    self.config, self.model, self.num_classes = config, model, num_classes
    self.pretrained = dict(pretrained)  # path -> variables
    self.finished = {}  # member index -> variables
    self._scratch_cache = {}

  def _scratch(self, index):
    if index not in self._scratch_cache:
      if isinstance(self.model, resnet.ResNet) and self.config.init_scheme == 'torch':
        variables = torch_init.torch_drawn_variables(self.model, torch_seed(self.config.seed,
                                                                            index))
      elif isinstance(self.model, resnet.ResNet):
        rng = streams.numpy_rng(self.config.seed, 'init', index)
        variables = torch_init.resnet_variables(self.model, rng, self.config.init_scheme)
      else:
        key = streams.key(self.config.seed, 'init', index)
        variables = jax.device_get(dict(models.init_variables(self.model, key,
                                                              self.config.image_size)))
      self._scratch_cache[index] = variables
    return self._scratch_cache[index]

  def _with_head(self, variables, index):
    head = models.head_name(variables)
    if (variables['params'][head]['kernel'].shape[-1] == self.num_classes
        and not self.config.new_head):
      return variables
    key = streams.key(self.config.seed, 'head', index)
    return jax.device_get(models.replace_head(variables, self.num_classes, key))

  def initial(self, member):
    if member.init == 'previous':
      return self.finished[member.index - 1]
    if member.init == 'first':
      return self.finished[1]
    if not member.ckpt:
      return self._scratch(member.index)
    return self._with_head(self.pretrained[member.ckpt], member.index)

  def regularizer(self, member):
    """Variables of the feature-map regulariser: member 1, or the pre-trained model (with a
    head of this task's size: only its features are read)."""
    if self.config.which_model_is_regularizer != 'pretrain':
      return self.finished[1]
    path = member.ckpt or self.config.ckpt or ''
    if not path:
      return self._scratch(member.index)
    return self._with_head(self.pretrained[path], member.index)

  def earlier(self, member):
    """Saved members WO / prev-CE may draw from: before `member`, other than member 1."""
    return sorted(i for i in self.finished if i != 1 and i < member.index)

  def flat_params(self, index):
    """Member `index`'s parameters as one vector, in losses.flatten_params order."""
    return np.concatenate([np.ravel(x) for x in
                           jax.tree_util.tree_leaves(self.finished[index]['params'])])

  def load_finished(self, workdir, stage):
    for m in stage:
      path = rundir.RunDir(workdir).member(m.index, rundir.CHECKPOINT)
      if not os.path.isdir(path):
        raise UserError(f'member {m.index} finished before the run stopped, but its checkpoint '
                        f'{path} is missing; restore it, or pass --config.overwrite=True to '
                        'train the run again')
      _, variables = checkpoints.load_pretrained(path)
      self.finished[m.index] = jax.device_get(dict(variables))

