"""Forward passes of a run's model: probabilities, feature maps and recomputed BN statistics.

Used by the engine's test evaluation, by ensemble.py and by the analysis. All take uint8
images [N, H, W, 3] and apply the run's eval transform on the device.

  Evaluator.from_config(config, num_classes, arch=None, width=None, train=False)
      the run's model and its evaluator, both from the run's config (model, width, dtype,
      image_size, remat, transform_name, interpolation, eval_batch_size); `arch` and `width`
      name a saved checkpoint's own. train=True gives the model the engine trains (the
      config's dtype and remat); otherwise the model that reads saved members (bfloat16 for a
      bfloat16 run, float32 for every other).

  Evaluator.probs(variables, images)     softmax probabilities [N, C] (float32 numpy)
  Evaluator.member_probs(stacked, images, batch_size=None)
      softmax probabilities [K, N, C] (float32 numpy) of K members whose variables are stacked
      on a leading axis (see `stack`): one jitted program per batch, the eval transform applied
      once and the members under jax.vmap. Batches of a fixed size (the last one padded, then
      cut), so one compilation per image shape; the engine's test evaluation uses it too.
  Evaluator.features(variables, images)  the five maps (layer1..layer4, pooled), each flattened
                                         per example: float32 numpy [N, D_l]; None for a
                                         slot the model lacks (a 2-stage Swin)
  Evaluator.recompute_bn(variables, images)
      variables whose batch_stats are the average of the per-batch train-mode statistics over
      `images` (eval transform), each batch weighted by its size: the reference's
      utils/batch_norm.update_bn (momentum b / (seen + b) after resetting the statistics; equal
      to torch.optim.swa_utils.update_bn when all batches have the same size). Running
      variances average the unbiased batch variances, as torch does. Batches are consecutive
      slices of `images`; a last batch of one example is merged into the one before it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from enstransfer_jax import models
from enstransfer_jax.data import augment
from enstransfer_jax.data import batches
from enstransfer_jax.models.batchnorm import BatchNorm

_MOMENTUM = BatchNorm.momentum  # torch convention: weight of the new batch statistic


_BAR_MIN_BATCHES = 20  # batch-level progress bars only for passes at least this long


class Evaluator:
  """Jitted forward passes of one model definition, shared by every set of variables."""

  def __init__(self, model, *, transform, image_size, interpolation='bilinear',
               batch_size=500, progress=False):
    self.model, self.batch_size, self.progress = model, int(batch_size), progress
    # What the compiled programs depend on: evaluators with equal keys are interchangeable.
    self.key = (model, transform, int(image_size), interpolation, self.batch_size)
    prep = functools.partial(augment.eval_transform, transform=transform,
                             image_size=image_size, interpolation=interpolation)

    def forward(variables, images):
      logits, feats = model.apply(variables, prep(images), train=False)
      probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
      return probs, tuple(None if f is None else f.reshape(f.shape[0], -1) for f in feats)

    def batch_stats(params, zero_stats, images):
      _, new = model.apply({'params': params, 'batch_stats': zero_stats}, prep(images),
                           train=True, mutable=['batch_stats'])
      return jax.tree_util.tree_map(lambda s: s / _MOMENTUM, new['batch_stats'])

    def member_probs(stacked, images):
      x = prep(images)
      one = lambda v: jax.nn.softmax(model.apply(v, x, train=False)[0].astype(jnp.float32), -1)
      return jax.vmap(one)(stacked)

    self._probs = jax.jit(lambda v, x: forward(v, x)[0])
    self._member_probs = jax.jit(member_probs)
    self._features = jax.jit(lambda v, x: forward(v, x)[1])
    self._batch_stats = jax.jit(batch_stats)

  @classmethod
  def from_config(cls, config, num_classes, *, arch=None, width=None, train=False,
                  progress=False):
    """The run's model and its evaluator (see the module docstring)."""
    dtype = config.get('dtype', 'float32')
    if not train:
      dtype = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
    model = models.create_model(
        arch or config.model, int(num_classes),
        width=config.width if width is None else int(width), dtype=dtype,
        image_size=int(config.image_size), remat=bool(train and config.get('remat', False)))
    return cls(model, transform=config.transform_name, image_size=int(config.image_size),
               interpolation=config.get('interpolation', 'bilinear'),
               batch_size=config.get('eval_batch_size', 500), progress=progress)

  def _padded(self, fn, variables, images, desc, axis=0, batch_size=None):
    """fn over batches of a fixed size (the last one padded, then cut): one compilation.

    `axis`: the example axis of fn's outputs (1 for member_probs' [K, B, C]).
    """
    n = len(images)
    size = int(batch_size or self.batch_size)
    out = []
    slices = batches.batch_slices(n, size)
    cut = lambda a, k: np.asarray(a)[(slice(None),) * axis + (slice(0, k),)]  # on the host
    for lo, hi in tqdm(slices, desc=desc, leave=False,
                       disable=not self.progress or len(slices) < _BAR_MIN_BATCHES):
      x = images[lo:hi]
      if hi - lo < size and n > size:
        x = np.concatenate([x, np.repeat(x[-1:], size - (hi - lo), 0)])
      out.append(jax.tree_util.tree_map(lambda a, k=hi - lo: cut(a, k), fn(variables, x)))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis), *out)

  def probs(self, variables, images):
    return self._padded(self._probs, variables, images, 'predict')

  def member_probs(self, stacked_variables, images, batch_size=None):
    """[K, N, C] float32 softmax of K stacked members on uint8 images [N, H, W, 3]."""
    return self._padded(self._member_probs, stacked_variables, images, 'predict', axis=1,
                        batch_size=batch_size)

  def features(self, variables, images):
    return list(self._padded(self._features, variables, images, 'features'))

  def recompute_bn(self, variables, images, batch_size=None):
    """variables with batch_stats recomputed on `images` (see the module docstring); a
    model without batch statistics (Swin) is returned as it is."""
    if not jax.tree_util.tree_leaves(variables.get('batch_stats', {})):
      return variables
    n = len(images)
    if n < 2:
      raise ValueError(f'recomputing BN statistics needs at least 2 images, got {n}')
    slices = batches.batch_slices(n, int(batch_size or self.batch_size))
    if len(slices) > 1 and slices[-1][1] - slices[-1][0] < 2:
      slices = slices[:-2] + [(slices[-2][0], n)]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, variables['batch_stats'])
    total = jax.tree_util.tree_map(lambda z: np.zeros(z.shape, np.float64), zeros)
    for lo, hi in tqdm(slices, desc='BN statistics', leave=False,
                       disable=not self.progress or len(slices) < _BAR_MIN_BATCHES):
      stats = self._batch_stats(variables['params'], zeros, images[lo:hi])
      total = jax.tree_util.tree_map(lambda t, s, w=hi - lo: t + w * np.asarray(s, np.float64),
                                     total, stats)
    stats = jax.tree_util.tree_map(lambda t: (t / n).astype(np.float32), total)
    return {'params': variables['params'], 'batch_stats': stats}


def stack(trees):
  """One tree whose leaves are the given trees' leaves stacked on a new leading axis."""
  if not trees:
    raise ValueError('stack needs at least one tree')
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def combine(trees, coefficients):
  """sum_k c_k tree_k, leaf by leaf (float32); the coefficients need not sum to 1."""
  coefficients = [float(c) for c in coefficients]
  if len(trees) != len(coefficients) or not trees:
    raise ValueError(f'{len(trees)} trees and {len(coefficients)} coefficients: give one '
                     'coefficient per tree')

  def leaf(*xs):
    out = coefficients[0] * np.asarray(xs[0], np.float32)
    for c, x in zip(coefficients[1:], xs[1:]):
      out = out + c * np.asarray(x, np.float32)
    return out
  return jax.tree_util.tree_map(leaf, *trees)
