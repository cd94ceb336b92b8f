"""Distillation of an ensemble into one student (Hinton et al., 2015, with the teacher an
ensemble of K members).

  q      = mean_k softmax(z_k / T)                    the tempered ensemble's probabilities
  loss   = T^2 x mean_b [ sum_c q_bc (log q_bc - log softmax(s_b / T)_c) ]
the KL divergence from the teacher to the tempered student, scaled by T^2 so that its
gradient keeps its size as T changes; a weighted mean over the batch (weights 0 for padding).
At T = 1, q is the ensemble's predictive distribution (the mean of the members' softmax).
"""

import jax
import jax.numpy as jnp


def ensemble_targets(teacher_logits, temperature):
  """q [B, C]: the mean over members of softmax(teacher_logits / T); logits [K, B, C]."""
  z = jnp.asarray(teacher_logits, jnp.float32) / temperature
  return jnp.mean(jax.nn.softmax(z, -1), axis=0)


def distillation_loss(student_logits, teacher_logits, temperature, weights=None):
  """T^2 x (weighted) mean KL(q || softmax(s / T)); student [B, C], teacher [K, B, C]."""
  q = jax.lax.stop_gradient(ensemble_targets(teacher_logits, temperature))
  log_s = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / temperature, -1)
  kl = jnp.sum(jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - log_s), 0.0), -1)
  if weights is None:
    weights = jnp.ones(kl.shape, kl.dtype)
  return temperature ** 2 * jnp.sum(kl * weights) / jnp.maximum(jnp.sum(weights), 1.0)
