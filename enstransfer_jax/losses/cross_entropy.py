"""Cross-entropy of logits against integer labels, averaged over the samples.

Equal to torch.nn.CrossEntropyLoss() with its defaults (mean reduction, no label
smoothing, no class weights).
"""

import jax
import jax.numpy as jnp


def per_sample_cross_entropy(logits, labels):
  """-log softmax(logits)[label] for each sample: logits [..., c], labels [...] -> [...]."""
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
    raise ValueError(f'cross_entropy expects logits [..., classes] and integer labels [...], '
                     f'got {logits.shape} and {labels.shape}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'cross_entropy expects integer class labels, got dtype {labels.dtype}.')
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits, labels):
  """Mean cross-entropy over the samples (torch.nn.CrossEntropyLoss)."""
  return jnp.mean(per_sample_cross_entropy(logits, labels))
