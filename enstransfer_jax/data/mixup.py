"""Mixup / CutMix with timm's batch-mode semantics, and smoothed one-hot targets, on the device.

timm's Mixup(mode='batch') draws one lambda per batch: with probability `prob` it mixes,
choosing CutMix with probability `switch_prob` when both alphas are > 0 (else the enabled
one); lambda ~ Beta(alpha, alpha) of the chosen method. Mixup: x = lam x + (1 - lam) x',
CutMix: the box of rand_bbox (cut = int(side sqrt(1 - lam)), centre uniform over the
image, edges centre - cut // 2 and centre + (cut + 1) // 2 clipped to the image, as
timm 1.0; the reference pins no timm version) is pasted from x', and lambda is
corrected to 1 - box area / image area. x' is the batch reversed (sample i with B-1-i) and
the targets are lam y + (1 - lam) y' with y = one_hot(label) (1 - ls) + ls / C (timm's
mixup_target). Without mixing, lam = 1: the targets are the smoothed one-hot alone.

Padding: the engine pads an epoch's last batch (mask 0). Sample i < n of the n real samples
is paired with sample n-1-i, i.e. timm's reversal of the real batch alone; padded rows
pair with themselves and keep mask 0, so they count nowhere (timm asserts an even batch;
with an odd n the middle sample is paired with itself, as the reversal does).

The random draws (apply, switch, lambda, box centre) come from one key: the engine passes
the step's key of stream (seed, 'augment', member, step), folded with MIX_FOLD.
"""

import jax
import jax.numpy as jnp

MIX_FOLD = 7  # fold_in of the step's augmentation key that draws the mixing parameters


def smooth_one_hot(labels, num_classes, smoothing):
  """timm's one_hot(on = 1 - ls + ls / C, off = ls / C): float32 [B, C]."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(
      jnp.float32)


def sample_params(key, height, width, *, mixup_alpha, cutmix_alpha, prob, switch_prob):
  """{'lam': float32 (corrected for CutMix), 'cutmix': bool, 'box': int32 (yl, yh, xl, xh)}."""
  k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(key, 6)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  apply = jax.random.uniform(k_apply) < prob
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  box, corrected = cutmix_box(lam, cy, cx, height, width)
  cutmix = apply & use_cutmix
  return {'lam': jnp.where(cutmix, corrected, lam), 'cutmix': cutmix, 'box': box}


def cutmix_box(lam, cy, cx, height, width):
  """timm's rand_bbox at centre (cy, cx) and the corrected lambda."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  corrected = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / (height * width)
  return jnp.stack([yl, yh, xl, xh]).astype(jnp.int32), corrected


def partners(mask):
  """Index of each sample's partner: the k-th of the n real samples (in row order) pairs with
  the (n-1-k)-th, as timm's flipped batch; padding rows (wherever they are) pair with
  themselves."""
  i = jnp.arange(mask.shape[0])
  real = mask > 0
  n = jnp.sum(real).astype(i.dtype)
  rank = jnp.cumsum(real).astype(i.dtype) - 1  # k of each real row
  rows = jnp.argsort(~real, stable=True)  # the real rows first, in order
  return jnp.where(real, rows[jnp.clip(n - 1 - rank, 0, mask.shape[0] - 1)], i)


def apply_params(images, targets, mask, params):
  """Mixes images [B, H, W, C] and soft targets [B, K] with given parameters."""
  other = partners(mask)
  lam = params['lam']
  _, height, width, _ = images.shape
  yl, yh, xl, xh = params['box']
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  cut = jnp.where(inside[None, :, :, None], images[other], images)
  blend = lam * images + (1.0 - lam) * images[other]
  mixed = jnp.where(params['cutmix'], cut, blend)
  mixed = jnp.where(lam < 1.0, mixed, images)  # timm returns the batch as it is at lam 1
  return mixed.astype(images.dtype), lam * targets + (1.0 - lam) * targets[other]


def mix(key, images, labels, mask, num_classes, *, smoothing, mixup_alpha, cutmix_alpha,
        prob, switch_prob):
  """(mixed images, soft targets float32 [B, C]) for one batch; see the module docstring."""
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if not (mixup_alpha > 0 or cutmix_alpha > 0):
    return images, targets
  _, height, width, _ = images.shape
  params = sample_params(key, height, width, mixup_alpha=mixup_alpha,
                         cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
  return apply_params(images, targets, mask, params)
