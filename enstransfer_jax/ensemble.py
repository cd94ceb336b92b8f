"""A finished run as an ensemble: load its members, predict with uncertainty on new images.

  ens = Ensemble.load(workdir, members=None, temperature=None)
  pred = ens.predict(images, batch_size=None)

`load` reads the run's config.json and run_info.json and the orbax checkpoints of the chosen
members (1-based ids, default all), stacks them on a leading member axis and puts them on the
default JAX device. `predict` evaluates all members in one jitted, vmapped program per batch
(evaluator.Evaluator.member_probs) after the run's eval transform (data/augment.py
eval_transform: 'none' and 'cifar' resize to image_size x image_size, 'imagenet' resizes the
shorter side to round(256 S / 224) and centre-crops S x S), so images of any size work.

Images: an array [N, H, W, 3] (or [N, H, W, 1], grey, copied to 3 channels), or a list of
[H, W, 3] arrays of different sizes (evaluated one size at a time, returned in the given order).
uint8 values are 0..255, as the run's data; float values must lie in [0, 1] (the convention of
torchvision's ToTensor and matplotlib) and are rounded to uint8 as round(255 x), the precision
the members were trained with.

Prediction (numpy):
  member_probs        [K, N, C] float32, softmax of each member
  probs               [N, C] float32, their mean (the ensemble of the run's summary.json);
                      with a temperature T, softmax(log(mean) / T)
  predicted           [N] int, argmax of probs (unchanged by T)
  entropy             [N] H(probs), nats
  expected_entropy    [N] mean over members of H(member_probs[k])
  mutual_information  [N] H(mean of member_probs) - expected_entropy >= 0: the members'
                      disagreement. Both describe the members themselves and ignore T.
  agreement           [N] fraction of members whose argmax equals `predicted`
"""

import dataclasses
import os
from typing import Optional, Sequence

import jax
import numpy as np

from enstransfer_jax import checkpoints, evaluator, metrics, rundir
from enstransfer_jax.evaluator import Evaluator
from enstransfer_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Prediction:
  """What Ensemble.predict returns (see the module docstring)."""
  probs: np.ndarray
  member_probs: np.ndarray
  predicted: np.ndarray
  entropy: np.ndarray
  expected_entropy: np.ndarray
  mutual_information: np.ndarray

  @property
  def agreement(self):
    return np.mean(self.member_probs.argmax(-1) == self.predicted[None], axis=0)

  def top_k(self, k=5):
    """(classes [N, k], probabilities [N, k]) in decreasing probability."""
    k = min(int(k), self.probs.shape[-1])
    order = np.argsort(-self.probs, axis=-1, kind='stable')[:, :k]
    return order, np.take_along_axis(self.probs, order, -1)

  def arrays(self):
    """Every array by name, for np.savez."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {
        'agreement': self.agreement}


def as_uint8(images):
  """uint8 [N, H, W, 3] from uint8 or [0, 1] float images (see the module docstring)."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise UserError(f'images must be [N, H, W, 3] (or [N, H, W, 1]), got shape {x.shape}')
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
      raise UserError(f'float images must hold values in [0, 1], got {np.nanmin(x):g}..'
                      f'{np.nanmax(x):g}; divide 0..255 values by 255 or pass uint8 images')
    return np.round(x.astype(np.float64) * 255.0).astype(np.uint8)
  if np.issubdtype(x.dtype, np.integer):
    if x.size and (x.min() < 0 or x.max() > 255):
      raise UserError(f'integer images must hold values in 0..255, got {x.min()}..{x.max()}')
    return x.astype(np.uint8)
  raise UserError(f'images must be uint8 or float in [0, 1], got dtype {x.dtype}')


class Ensemble:
  """The members of a finished run, stacked on a leading axis, with the run's eval transform."""

  def __init__(self, workdir, config, info, member_ids, stacked_variables, evaluator,
               temperature=None):
    self.workdir, self.config, self.info = workdir, config, info
    self.members = tuple(member_ids)
    self.variables = stacked_variables
    self.evaluator = evaluator
    if temperature is not None and not float(temperature) > 0:
      raise UserError(f'temperature must be > 0, got {temperature}')
    self.temperature = None if temperature is None else float(temperature)
    self.note = ''  # set by load() when a partial run is used
    self.num_classes = int(info['num_classes'])
    subset = tuple(config.get('class_subset') or ())
    # The dataset's label of each output (class_subset maps output k to label subset[k]).
    self.class_labels = subset if subset else tuple(range(self.num_classes))

  @classmethod
  def load(cls, workdir, members: Optional[Sequence[int]] = None,
           temperature: Optional[float] = None, *, progress: bool = True,
           allow_partial: bool = False):
    """Members (1-based ids, default all) of the finished run in `workdir`. By default every
    member of summary.json must be there; `members` picks some, `allow_partial` takes those
    of an unfinished or damaged run (self.note then says so)."""
    workdir = os.fspath(workdir)
    run = rundir.RunDir(workdir).existing()
    config, info = run.config(), run.run_info()
    if not allow_partial and not run.finished:
      raise UserError(f'{workdir} holds an unfinished run (no summary.json); run its training '
                      'command again to finish it, or pass --allow-partial to use the finished '
                      'members')
    found = run.member_ids(required=True)
    note = run.check_members(found, allow_partial) if members is None else ''
    ids = found if members is None else [int(m) for m in members]
    missing = [m for m in ids if m not in found]
    if missing or not ids or len(set(ids)) != len(ids):
      raise UserError(f'members {list(ids)}: choose distinct ids among those of {workdir}: '
                      f"{','.join(map(str, found))}")
    arch, variables, desc = None, [], {}
    for m in ids:
      arch, v = run.member_variables(m)
      variables.append({'params': v['params'], 'batch_stats': v['batch_stats']})
      desc = checkpoints.describe(variables[-1])  # ResNet or Swin
      if desc['num_classes'] != int(info['num_classes']):
        raise UserError(f"member {m} has {desc['num_classes']} outputs but run_info.json "
                        f"says {info['num_classes']} classes; the work dir is inconsistent")
    ev = Evaluator.from_config(config, info['num_classes'], arch=arch, width=desc['width'],
                               progress=progress)
    stacked = jax.device_put(evaluator.stack(variables))
    ensemble = cls(workdir, config, info, ids, stacked, ev, temperature)
    ensemble.note = note
    return ensemble

  def member_probs(self, images, batch_size=None):
    """[K, N, C] float32 softmax of every member (see the module docstring for images)."""
    if isinstance(images, (list, tuple)):
      return self._by_shape(images, batch_size)
    x = as_uint8(images)
    if not len(x):
      return np.zeros((len(self.members), 0, self.num_classes), np.float32)
    return self.evaluator.member_probs(self.variables, x, batch_size=batch_size)

  def _by_shape(self, images, batch_size):
    arrays = [np.asarray(im) for im in images]
    for i, im in enumerate(arrays):
      if im.ndim != 3:
        raise UserError(f'image {i} of the list has shape {im.shape}; each must be [H, W, 3]')
    out = np.zeros((len(self.members), len(arrays), self.num_classes), np.float32)
    groups = {}
    for i, im in enumerate(arrays):
      groups.setdefault((im.shape, im.dtype.str), []).append(i)
    for idx in groups.values():
      out[:, idx] = self.member_probs(np.stack([arrays[i] for i in idx]), batch_size)
    return out

  def predict(self, images, batch_size=None) -> Prediction:
    """Prediction of the ensemble on `images` (array or list; see the module docstring)."""
    member = np.asarray(self.member_probs(images, batch_size), np.float32)
    unc = metrics.uncertainty(member)
    mean = member.astype(np.float64).mean(0)
    probs = mean if self.temperature is None else metrics.temper(mean, self.temperature)
    ent = unc['entropy'] if self.temperature is None else metrics.entropy(probs)
    return Prediction(
        probs=probs.astype(np.float32), member_probs=member,
        predicted=probs.argmax(-1).astype(np.int64), entropy=ent.astype(np.float32),
        expected_entropy=unc['expected_entropy'].astype(np.float32),
        mutual_information=unc['mutual_information'].astype(np.float32))
