"""The 'cifar' train augmentation as the train step draws it, against torchvision's definition.

The reference trains with RandomHorizontalFlip() then RandomCrop(32, padding=4) then Normalize
(torchvision): every image of every batch, every epoch, gets its own flip (probability 1/2)
and its own crop offset (top, left), each uniform on {0, ..., 2 x 4} (`torch.randint(0,
h + 8 - s + 1)`), independent of each other and of everything else; the crop cuts the image
zero-padded in [0, 1] (black), and only then is it normalised. Flipping before or after the
crop gives the same distribution (offset left <-> 8 - left).

1. The draws (`augment.sample_train_params` with the key the train step uses,
   `step.augment_key`), over 2 seeds x 2 members x 24 steps x 64 rows: the (top, left, flip)
   triples uniform on their 162 values (chi-square); the draw of a row independent of the
   same row's at the next step, of the other member's and of the other seed's at the same
   step, and of the next row's (a key that ignores the step, the member, the seed or the row
   repeats its draws: then about all pairs, instead of 1/162, are equal).
2. The output distribution on fixed images: the mean and the mean square over 4096 draws of
   `augment.train_transform` against their exact values, the average over the 162 equally
   likely outcomes computed with hand-written torch (functional pad, slicing, flip of the
   last axis, (x - mean) / std: what the torchvision transforms compute for given draws).
3. The train step with augmentation on, float64: three steps of the engine's jitted step
   (a conv / BatchNorm / dense model, 8 px, member 2, the last batch partial and padded)
   against the same model in torch trained by torch.optim.SGD on the same images cropped and
   flipped by hand-written torch with the step's draws: the cross-entropy of every step and
   the weights and running statistics after the last agree to 1e-12 (float64 rounding).
   bench/parity_reference.py --augment cifar does the same for whole runs of ResNet-18
   against the reference's own loop (FIDELITY.md).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from enstransfer_jax import optim
from enstransfer_jax.data import augment
from enstransfer_jax.models import batchnorm
from enstransfer_jax.training import step as step_lib
from tests import engine_util

PAD = augment.CIFAR_PADDING
OUTCOMES = (2 * PAD + 1) ** 2 * 2  # (top, left, flip)


def _draws(seeds, members, steps, batch, size=32, image_size=32):
  """[seeds, members, steps, batch] codes (top * 9 + left) * 2 + flip of the step's draws."""
  def one(keys, member, step):
    p = augment.sample_train_params(step_lib.augment_key(keys, member, step), batch, size,
                                    size, transform='cifar', image_size=image_size)
    return (p['box'][:, 0] * (2 * PAD + 1) + p['box'][:, 1]) * 2 + p['flip']

  f = jax.jit(jax.vmap(jax.vmap(jax.vmap(one, (None, None, 0)), (None, 0, None)),
                       (0, None, None)))
  keys = jax.tree_util.tree_map(lambda *k: jnp.stack(k),
                                *[step_lib.stream_keys(s) for s in seeds])
  return np.asarray(f(keys, jnp.asarray(members), jnp.arange(steps)))


def test_cifar_draws_are_torchvision_distribution_and_independent():
  codes = _draws(seeds=(0, 1), members=(1, 2), steps=24, batch=64)
  n = codes.size
  counts = np.bincount(codes.ravel(), minlength=OUTCOMES)
  assert len(counts) == OUTCOMES  # top, left in 0..8 only
  assert stats.chisquare(counts).pvalue > 1e-4, counts
  assert stats.binomtest(int((codes % 2).sum()), n, 0.5).pvalue > 1e-4
  pairs = {'next step, same row': (codes[:, :, :-1], codes[:, :, 1:]),
           'other member, same step': (codes[:, 0], codes[:, 1]),
           'other seed, same step': (codes[0], codes[1]),
           'next row, same step': (codes[..., :-1], codes[..., 1:])}
  for what, (a, b) in pairs.items():
    equal = (a == b).mean()
    # equal with probability 1/162 when independent; 6 binomial standard deviations
    sd = np.sqrt(a.size * (1 / OUTCOMES) * (1 - 1 / OUTCOMES)) / a.size
    assert abs(equal - 1 / OUTCOMES) < 6 * sd, (what, equal)
    table = np.zeros((2 * PAD + 1,) * 2)  # left offsets of the pairs: independent
    np.add.at(table, (a.ravel() // 2 % (2 * PAD + 1), b.ravel() // 2 % (2 * PAD + 1)), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-4, what


def _torch_augment(images, box, flip):
  """Hand-written torch: pad 4 with zeros in [0, 1], crop (top, left), flip, normalise;
  float64 NHWC."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).double() / 255.0
  x = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
  s = images.shape[1]
  out = []
  for j in range(len(images)):
    crop = x[j, :, box[j][0]:box[j][0] + s, box[j][1]:box[j][1] + s]
    out.append(torch.flip(crop, [-1]) if flip[j] else crop)
  mean = torch.tensor(augment.MEAN, dtype=torch.float64)[:, None, None]
  std = torch.tensor(augment.STD, dtype=torch.float64)[:, None, None]
  return ((torch.stack(out) - mean) / std).numpy().transpose(0, 2, 3, 1)


def test_cifar_output_mean_and_square_equal_torch_average_over_outcomes():
  size, draws = 10, 2048
  images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  outcomes = [(t, l, f) for t in range(2 * PAD + 1) for l in range(2 * PAD + 1)
              for f in (0, 1)]
  exact = np.stack([_torch_augment(images, [(t, l)] * 2, [f] * 2) for t, l, f in outcomes])
  mean, square = exact.mean(0), (exact ** 2).mean(0)
  sd = np.sqrt(np.maximum((exact ** 2).mean(0) - mean ** 2, 1e-12))
  keys = step_lib.stream_keys(3)
  batch = np.repeat(images, 32, axis=0)  # 64 rows per step: each image 32 times
  f = jax.jit(jax.vmap(lambda step: augment.train_transform(
      step_lib.augment_key(keys, 1, step), batch, transform='cifar', image_size=size)))
  out = np.asarray(f(jnp.arange(draws // 32)), np.float64)  # [steps, 64, s, s, 3]
  out = out.reshape(-1, 2, 32, size, size, 3).transpose(1, 0, 2, 3, 4, 5).reshape(
      2, draws, size, size, 3)
  got_mean = out.mean(1)
  got_square = (out ** 2).mean(1)
  # every pixel within 5.5 standard errors (2 x 12 x 12 x 3 pixels)
  assert np.all(np.abs(got_mean - mean) <= 5.5 * sd / np.sqrt(draws) + 1e-6)
  sd2 = np.sqrt(np.maximum((exact ** 4).mean(0) - square ** 2, 1e-12))
  assert np.all(np.abs(got_square - square) <= 5.5 * sd2 / np.sqrt(draws) + 1e-6)


class _Tiny(nn.Module):
  """conv 3x3 -> BatchNorm -> ReLU -> spatial mean -> dense: the train step's model interface
  (train, mask, stop_gradient_after, frozen_bn) at a compile cost of a second."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False, stop_gradient_after=None, frozen_bn=(), mask=None):
    del stop_gradient_after, frozen_bn
    f64 = jnp.float64
    x = nn.Conv(4, (3, 3), padding=1, use_bias=False, dtype=f64, param_dtype=f64,
                name='conv')(x)
    x = nn.relu(batchnorm.BatchNorm(dtype=f64, name='bn')(x, not train, mask)).mean((1, 2))
    return nn.Dense(self.num_classes, dtype=f64, param_dtype=f64, name='fc')(x), (x,)


def _torch_tiny(variables):
  import torch  # pylint: disable=g-import-not-at-top
  p, b = variables['params'], variables['batch_stats']
  conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
  bn, fc = torch.nn.BatchNorm2d(4).double(), torch.nn.Linear(4, 3).double()
  t = lambda a: torch.from_numpy(np.array(a, np.float64))
  with torch.no_grad():
    conv.weight.copy_(t(p['conv']['kernel']).permute(3, 2, 0, 1))
    bn.weight.copy_(t(p['bn']['scale']))
    bn.bias.copy_(t(p['bn']['bias']))
    bn.running_mean.copy_(t(b['bn']['mean']))
    bn.running_var.copy_(t(b['bn']['var']))
    fc.weight.copy_(t(p['fc']['kernel']).T)
    fc.bias.copy_(t(p['fc']['bias']))
  net = torch.nn.ModuleDict({'conv': conv, 'bn': bn, 'fc': fc}).train()
  forward = lambda x: fc(torch.relu(bn(conv(x))).mean((2, 3)))
  return net, forward


def test_train_step_with_cifar_augmentation_equals_torch_sgd_float64():
  """Three steps of the engine's jitted train step with the 'cifar' transform (member 2, the
  last batch partial and padded) equal torch.optim.SGD on the same images augmented by
  hand-written torch with the draws of step.augment_key(keys, member, step)."""
  torch = pytest.importorskip('torch')
  size, batch, real_last, member, steps, lr, wd = 8, 8, 5, 2, 3, 0.1, 1e-3
  config = engine_util.tiny_config(batch_size=batch, scheduler='constant', num_fge=1, lr=lr,
                                   wd=wd, transform_name='cifar', image_size=size, seed=7)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (steps, batch, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, (steps, batch)).astype(np.int32)
  masks = np.ones((steps, batch), np.float32)
  masks[-1, real_last:] = 0  # the last step: a partial batch padded with its first row
  images[-1, real_last:], labels[-1, real_last:] = images[-1, 0], labels[-1, 0]
  with jax.enable_x64(True):
    model = _Tiny()
    variables = jax.device_get(model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, size, size, 3), jnp.float64)))
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    net, forward = _torch_tiny(variables)
    tx = optim.create_optimizer(config)
    state = engine_util.stacked_state([variables], tx, step_lib.Terms(), [0], [member], config)
    train_step = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model), tx)
    keys = step_lib.stream_keys(config.seed)
    sgd = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for s in range(steps):
      state, metrics = train_step(state, {'images': images[s][None], 'labels': labels[s][None],
                                          'mask': masks[s][None],
                                          'new_epoch': np.ones(1, bool)}, {})
      p = jax.device_get(augment.sample_train_params(
          step_lib.augment_key(keys, member, s), batch, size, size, transform='cifar',
          image_size=size))
      k = int(masks[s].sum())
      x = _torch_augment(images[s][:k], p['box'][:k], p['flip'][:k])
      ce = torch.nn.functional.cross_entropy(
          forward(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))),
          torch.from_numpy(labels[s][:k]).long())
      sgd.zero_grad()
      ce.backward()
      sgd.step()
      assert abs(float(metrics['ce'][0]) - ce.item()) < 1e-12, (s, float(metrics['ce'][0]),
                                                                  ce.item())
    final = jax.tree_util.tree_map(lambda a: np.asarray(a[0]), jax.device_get(
        state.variables()))
  engine, ref = _torch_tiny(final)[0].state_dict(), net.state_dict()
  for name, value in ref.items():
    if value.is_floating_point():
      np.testing.assert_allclose(engine[name].numpy(), value.detach().numpy(), rtol=0,
                                 atol=1e-12, err_msg=name)
