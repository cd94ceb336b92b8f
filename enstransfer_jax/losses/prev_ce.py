"""Previous-model cross-entropy: CE of the current logits against an earlier member's argmax.

prev_ce = mean over samples of CE(logits, argmax(prev_logits)). With only_negative the
mean runs only over the samples that the earlier member got wrong (argmax != label).
The thesis adds prev_ce_beta * prev_ce; a negative beta pushes the new member away from
the earlier one's predictions. The reference returned NaN (an empty mean) when the
earlier member got every sample right; this returns 0 in that case, with zero gradient.
"""

import jax
import jax.numpy as jnp

from enstransfer_jax.losses.cross_entropy import per_sample_cross_entropy


def prev_ce(logits, prev_logits, labels, only_negative=False, weights=None):
  """CE(logits, argmax prev_logits), mean over (optionally only wrongly predicted) samples.

  Args:
    logits: [n, c] current logits.
    prev_logits: [n, c] logits of an earlier member (treated as constants).
    labels: [n] integer labels (used only with only_negative).
    only_negative: average only over samples where argmax(prev_logits) != labels.
    weights: optional [n] per-sample weights (0 for padding, which then counts nowhere).
  """
  logits, prev_logits = jnp.asarray(logits), jnp.asarray(prev_logits)
  if logits.shape != prev_logits.shape:
    raise ValueError(f'prev_ce needs logits and prev_logits of the same shape, got '
                     f'{logits.shape} and {prev_logits.shape}.')
  targets = jnp.argmax(jax.lax.stop_gradient(prev_logits), axis=-1)
  per_sample = per_sample_cross_entropy(logits, targets)
  keep = jnp.ones(per_sample.shape, bool) if weights is None else jnp.asarray(weights) > 0
  if not only_negative:
    if weights is None:
      return jnp.mean(per_sample)
    return jnp.sum(jnp.where(keep, per_sample, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
  labels = jnp.asarray(labels)
  if labels.shape != targets.shape:
    raise ValueError(f'prev_ce expects labels of shape {targets.shape}, got {labels.shape}.')
  mask = (targets != labels) & keep
  count = jnp.sum(mask)
  total = jnp.sum(jnp.where(mask, per_sample, 0.0))
  return total / jnp.maximum(count, 1).astype(per_sample.dtype)
