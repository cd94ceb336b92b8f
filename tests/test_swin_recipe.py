"""The Swin fine-tuning recipe against torch, PIL and timm's formulas.

Optimizer: Swin's AdamW parameter groups (no decay on norms, biases, absolute_pos_embed,
relative_position_bias_table), SimMIM's layer-wise lr decay and gradient clipping, against
torch.optim.AdamW with the reference's param groups and torch's clip_grad_norm_.
Targets: label smoothing and Mixup / CutMix (batch mode) against a numpy re-implementation
of timm's Mixup formulas, fed the same random draws; timm's own Mixup when timm is installed.
Augmentation: every RandAugment op against PIL (the calls timm makes) on fixed parameters,
the magnitude -> argument rules against timm's level functions, random erasing's box rule.
"""

import functools
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from enstransfer_jax import models, optim
from enstransfer_jax.data import mixup, randaugment as ra
from enstransfer_jax.training import step as step_lib


def _timm_module(name):
  """timm's data/<name>.py loaded alone (timm's package import needs torchvision)."""
  spec = importlib.util.find_spec('timm')
  if spec is None:
    pytest.skip(f'needs timm (data/{name}.py of timm 1.0.31, loaded alone: no torchvision '
                'needed): pip install --no-deps timm==1.0.31; the same rules are checked '
                'without timm by the written-out tests of this file')
  path = os.path.join(os.path.dirname(spec.origin), 'data', f'{name}.py')
  module_spec = importlib.util.spec_from_file_location(f'_timm_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------------- optimizer

@functools.lru_cache(maxsize=None)
def _swin_params(seed=0):
  model = models.create_model('SwinNano', 5, image_size=32)
  params = models.init_variables(model, jax.random.PRNGKey(seed))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)


def _torch_name(path):
  return '.'.join(str(k.key) for k in path)


def _reference_groups(named, wd, lr, layer_decay, simmim, depths):
  """torch param groups as the reference's utils/optimizers.py builds them (re-derived)."""
  num_layers = sum(depths) + 2
  scales = [layer_decay ** i for i in reversed(range(num_layers))]

  def layer_of(name):
    if name.startswith('patch_embed'):
      return 0
    if name.startswith('layers'):
      parts = name.split('.')
      layer, block = int(parts[1]), parts[3]
      if block in ('reduction', 'norm'):
        return sum(depths[:layer + 1])
      return sum(depths[:layer]) + int(block) + 1
    return num_layers - 1

  groups = {}
  for name, tensor in named:
    no_decay = (tensor.ndim == 1 or name.endswith('.bias') or 'absolute_pos_embed' in name
                or 'relative_position_bias_table' in name)
    key = ('no' if no_decay else 'decay', layer_of(name) if simmim else None)
    if key not in groups:
      scale = scales[key[1]] if simmim else 1.0
      groups[key] = {'params': [], 'weight_decay': 0.0 if no_decay else wd, 'lr': lr * scale}
    groups[key]['params'].append(tensor)
  return list(groups.values())


@pytest.mark.parametrize('simmim,clip,frozen', [(False, 0.0, ()), (True, 0.0, ()),
                                                (False, 5.0, ()), (True, 0.5, ('patch_embed',))])
def test_swin_adamw_groups_match_torch(simmim, clip, frozen):
  params = _swin_params()
  config = ml_collections.ConfigDict(dict(
      optimizer='adamw', wd=0.25, momentum=0.9, nesterov=False, model='SwinNano',
      clip_grad=clip, simmim=simmim, layer_decay=0.85))
  trainable = {k: k not in frozen for k in params}
  tx = optim.create_optimizer(config, trainable)
  state = tx.init(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  named = [(_torch_name(p), torch.nn.Parameter(torch.tensor(np.array(x)))) for p, x in leaves
           if _torch_name(p).split('.')[0] not in frozen and
           '.'.join(_torch_name(p).split('.')[:2]) not in frozen]
  lr = 1e-3
  topt = torch.optim.AdamW(_reference_groups(named, 0.25, lr, 0.85, simmim, (2, 2)), lr=lr,
                           betas=(0.9, 0.999), eps=1e-8, weight_decay=0.25)
  update = jax.jit(lambda s, g, p: optim.step(tx, s, g, p, learning_rate=lr, momentum=0.9))
  rng = np.random.default_rng(3)
  for _ in range(3):
    grads = jax.tree.map(lambda p: 3 * rng.standard_normal(p.shape).astype(np.float32), params)
    by_name = {_torch_name(p): g for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    for name, t in named:
      t.grad = torch.tensor(np.array(by_name[name]))
    if clip:
      torch.nn.utils.clip_grad_norm_([t for _, t in named], clip)
    topt.step()
    params, state = update(state, grads, params)
  got = {_torch_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  for name, t in named:
    np.testing.assert_allclose(got[name], t.detach().numpy(), rtol=2e-5, atol=2e-6,
                               err_msg=name)
  initial = {_torch_name(p): np.asarray(x)
             for p, x in jax.tree_util.tree_leaves_with_path(_swin_params())}
  for name in got:
    if name.split('.')[0] in frozen:
      np.testing.assert_array_equal(got[name], initial[name])


def test_layer_ids_are_the_references():
  depths = (2, 2, 6, 2)
  assert optim.swin_layer_id('patch_embed.proj.kernel', depths) == 0
  assert optim.swin_layer_id('layers.0.blocks.0.attn.qkv.kernel', depths) == 1
  assert optim.swin_layer_id('layers.2.blocks.5.mlp.fc1.bias', depths) == 2 + 2 + 5 + 1
  assert optim.swin_layer_id('layers.2.downsample.reduction.kernel', depths) == 10
  assert optim.swin_layer_id('layers.3.blocks.1.norm1.scale', depths) == 12
  assert optim.swin_layer_id('norm.scale', depths) == 13
  assert optim.swin_layer_id('head.kernel', depths) == 13


# ---------------------------------------------------------------------------- targets

def _numpy_timm_mix(x, labels, num_classes, smoothing, lam, use_cutmix, cy, cx):
  """timm's Mixup._mix_batch + mixup_target (batch mode), written out in numpy (NCHW)."""
  x = x.copy()
  if use_cutmix:
    h, w = x.shape[-2:]
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
    xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
    x[:, :, yl:yh, xl:xh] = x[::-1][:, :, yl:yh, xl:xh]
    lam = 1 - (yh - yl) * (xh - xl) / float(h * w)
  elif lam != 1:
    x = x * lam + x[::-1] * (1 - lam)
  off = smoothing / num_classes
  y1 = np.full((len(labels), num_classes), off)
  y1[np.arange(len(labels)), labels] = 1 - smoothing + off
  return x, y1 * lam + y1[::-1] * (1 - lam)


@pytest.mark.parametrize('use_cutmix,lam,cy,cx', [(False, 0.37, 0, 0), (True, 0.61, 3, 9),
                                                   (True, 0.2, 0, 11), (False, 1.0, 0, 0)])
def test_mixup_cutmix_match_timm_formulas(use_cutmix, lam, cy, cx):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 10, 12, 3)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  box, corrected = mixup.cutmix_box(jnp.float32(lam), cy, cx, 10, 12)
  params = {'lam': corrected if use_cutmix else jnp.float32(lam),
            'cutmix': jnp.asarray(use_cutmix), 'box': box}
  targets = mixup.smooth_one_hot(labels, 4, 0.1)
  got_x, got_t = mixup.apply_params(jnp.asarray(x), targets, jnp.ones(6), params)
  ref_x, ref_t = _numpy_timm_mix(x.transpose(0, 3, 1, 2), labels, 4, 0.1, lam, use_cutmix,
                                 cy, cx)
  np.testing.assert_allclose(np.asarray(got_x), ref_x.transpose(0, 2, 3, 1), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_t), ref_t, rtol=1e-6, atol=1e-7)


def test_padding_is_mixed_among_real_samples_only():
  """With 5 real samples of 8, the real ones are mixed as timm mixes a batch of 5."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((8, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  params = {'lam': jnp.float32(0.3), 'cutmix': jnp.asarray(False),
            'box': jnp.zeros(4, jnp.int32)}
  got_x, got_t = mixup.apply_params(jnp.asarray(x), mixup.smooth_one_hot(labels, 3, 0.0),
                                    jnp.asarray(mask), params)
  ref_x, ref_t = _numpy_timm_mix(x[:5].transpose(0, 3, 1, 2), labels[:5], 3, 0.0, 0.3, False,
                                 0, 0)
  np.testing.assert_allclose(np.asarray(got_x)[:5], ref_x.transpose(0, 2, 3, 1), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_t)[:5], ref_t, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got_x)[5:], x[5:], atol=1e-6)  # pairs with itself


def test_sampled_mixing_equals_timm_mixup_with_the_same_draws():
  """timm's own Mixup, its numpy draws replaced by the ones sample_params made."""
  timm_mixup = _timm_module('mixup')
  key = jax.random.PRNGKey(5)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((4, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 5, 4)
  for i in range(6):
    k = jax.random.fold_in(key, i)
    p = mixup.sample_params(k, 16, 16, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                            switch_prob=0.5)
    # Recover the draws: the cutmix flag, the raw lambda and the box centre.
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(k, 6)
    cut = bool(p['cutmix'])
    alpha = 1.0 if cut else 0.8
    raw = float(jax.random.beta(k_cut if cut else k_mix, alpha, alpha))
    draws = {'rand': iter([0.0, 0.0 if cut else 0.99]), 'beta': raw,
             'randint': iter([int(jax.random.randint(k_y, (), 0, 16)),
                              int(jax.random.randint(k_x, (), 0, 16))])}

    class FakeRandom:
      rand = staticmethod(lambda *a: next(draws['rand']))
      beta = staticmethod(lambda *a, **k: np.float64(draws['beta']))
      randint = staticmethod(lambda *a, **k: next(draws['randint']))

    timm_mixup.np = type('np', (), {'random': FakeRandom, 'sqrt': np.sqrt, 'clip': np.clip,
                                    'int': int})
    fn = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                          mode='batch', label_smoothing=0.1, num_classes=5)
    tx, tt = fn(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(labels))
    gx, gt = mixup.mix(k, jnp.asarray(x), jnp.asarray(labels), jnp.ones(4), 5, smoothing=0.1,
                       mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    np.testing.assert_allclose(np.asarray(gx), tx.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gt), tt.numpy(), atol=1e-5)


def _timm_params_per_batch(u_apply, u_switch, beta_mix, beta_cut, cy, cx, h, w, *,
                           mixup_alpha, cutmix_alpha, prob, switch_prob):
  """timm 1.0's Mixup._params_per_batch then cutmix_bbox_and_lam (rand_bbox, margin 0,
  correct_lam) in batch mode, written out; fed the uniform, beta and randint draws."""
  lam, use_cutmix = 1.0, False
  if u_apply < prob:
    if mixup_alpha > 0 and cutmix_alpha > 0:
      use_cutmix = u_switch < switch_prob
      lam = beta_cut if use_cutmix else beta_mix
    elif mixup_alpha > 0:
      lam = beta_mix
    else:
      use_cutmix, lam = True, beta_cut
  box = None
  if use_cutmix and lam != 1.0:
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
    xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
    box = (yl, yh, xl, xh)
    lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
  return lam, use_cutmix, box


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha,prob,switch_prob', [
    (0.8, 1.0, 1.0, 0.5), (0.8, 1.0, 0.6, 0.3), (0.8, 0.0, 1.0, 0.5), (0.0, 1.0, 0.7, 0.5)])
def test_sampled_params_follow_timms_per_batch_rule(mixup_alpha, cutmix_alpha, prob,
                                                    switch_prob):
  """sample_params against timm's rule written out (no timm needed), on the draws each key
  makes; and the switch and apply frequencies over many keys."""
  h, w = 14, 10
  kw = dict(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
            switch_prob=switch_prob)
  keys = jax.random.split(jax.random.PRNGKey(11), 40)
  for k in keys:
    p = mixup.sample_params(k, h, w, **kw)
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(k, 6)
    draws = [float(jax.random.uniform(k_apply)), float(jax.random.uniform(k_switch)),
             float(jax.random.beta(k_mix, mixup_alpha, mixup_alpha)) if mixup_alpha else 1.0,
             float(jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha)) if cutmix_alpha
             else 1.0,
             int(jax.random.randint(k_y, (), 0, h)), int(jax.random.randint(k_x, (), 0, w))]
    lam, use_cutmix, box = _timm_params_per_batch(*draws, h, w, **kw)
    np.testing.assert_allclose(float(p['lam']), lam, rtol=1e-6, atol=1e-7)
    if lam != 1.0:
      assert bool(p['cutmix']) == use_cutmix
    if box is not None:
      assert tuple(int(v) for v in p['box']) == tuple(int(v) for v in box)
  many = jax.vmap(lambda k: mixup.sample_params(k, h, w, **kw))(
      jax.random.split(jax.random.PRNGKey(3), 4000))
  applied = np.asarray(many['lam']) < 1.0
  np.testing.assert_allclose(applied.mean(), prob, atol=0.03)
  want_cut = switch_prob if mixup_alpha and cutmix_alpha else float(cutmix_alpha > 0)
  np.testing.assert_allclose(np.asarray(many['cutmix'])[applied].mean(), want_cut, atol=0.03)
  if mixup_alpha and not cutmix_alpha:  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    lam = np.asarray(many['lam'])[applied]
    np.testing.assert_allclose(lam.mean(), 0.5, atol=0.02)
    np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * mixup_alpha + 1)), rtol=0.1)


def test_label_smoothing_loss_is_torch_cross_entropy_with_smoothing():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((7, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 7)
  targets = mixup.smooth_one_hot(jnp.asarray(labels), 5, 0.1)
  ours = -jnp.sum(targets * jax.nn.log_softmax(logits, -1), -1).mean()
  ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                          label_smoothing=0.1)
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


# ---------------------------------------------------------------------------- augmentation

def _image(seed=0, h=20, w=24):
  rng = np.random.default_rng(seed)
  img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  img[5:15, 6:18] = img[5:15, 6:18] // 3 + 60  # some structure for equalize / contrast
  return img


_KW = dict(resample=Image.BICUBIC, fillcolor=ra.FILL)
_PIL_OPS = {  # (op, magnitude, negate) -> what timm calls with the argument it derives
    'AutoContrast': lambda im, a: ImageOps.autocontrast(im),
    'Equalize': lambda im, a: ImageOps.equalize(im),
    'Invert': lambda im, a: ImageOps.invert(im),
    'PosterizeIncreasing': lambda im, a: ImageOps.posterize(im, int(a)),
    'SolarizeIncreasing': lambda im, a: ImageOps.solarize(im, int(a)),
    'SolarizeAdd': lambda im, a: im.point([min(255, i + int(a)) if i < 128 else i
                                           for i in range(256)] * 3),
    'ColorIncreasing': lambda im, a: ImageEnhance.Color(im).enhance(a),
    'ContrastIncreasing': lambda im, a: ImageEnhance.Contrast(im).enhance(a),
    'BrightnessIncreasing': lambda im, a: ImageEnhance.Brightness(im).enhance(a),
    'SharpnessIncreasing': lambda im, a: ImageEnhance.Sharpness(im).enhance(a),
    'Rotate': lambda im, a: im.rotate(a, **_KW),
    'ShearX': lambda im, a: im.transform(im.size, Image.AFFINE, (1, a, 0, 0, 1, 0), **_KW),
    'ShearY': lambda im, a: im.transform(im.size, Image.AFFINE, (1, 0, 0, a, 1, 0), **_KW),
    'TranslateXRel': lambda im, a: im.transform(im.size, Image.AFFINE,
                                                (1, 0, a * im.size[0], 0, 1, 0), **_KW),
    'TranslateYRel': lambda im, a: im.transform(im.size, Image.AFFINE,
                                                (1, 0, 0, 0, 1, a * im.size[1]), **_KW),
}


def _timm_arg(op, magnitude, negate):
  """The argument timm's level function gives (re-derived from its source)."""
  level = magnitude / 10.0
  sign = -1 if negate else 1
  return {'Rotate': sign * level * 30, 'ShearX': sign * level * 0.3,
          'ShearY': sign * level * 0.3, 'TranslateXRel': sign * level * 0.45,
          'TranslateYRel': sign * level * 0.45,
          'PosterizeIncreasing': 4 - int(level * 4),
          'SolarizeIncreasing': 256 - min(256, int(level * 256)),
          'SolarizeAdd': min(128, int(level * 110))}.get(
              op, max(0.1, 1.0 + sign * level * 0.9))


@pytest.mark.parametrize('op', ra.OPS)
def test_each_randaugment_op_matches_pil(op):
  magnitude, negate = (9.3, False) if ra.OPS.index(op) % 2 else (7.1, True)
  img = _image()
  ref = np.asarray(_PIL_OPS[op](Image.fromarray(img), _timm_arg(op, magnitude, negate)),
                   np.float32)
  arg = ra.level_args(op, jnp.float32(magnitude), jnp.asarray(negate))
  if op not in ('AutoContrast', 'Equalize', 'Invert'):
    np.testing.assert_allclose(float(arg), _timm_arg(op, magnitude, negate), rtol=1e-6)
  got = np.asarray(ra.apply_op(op, jnp.asarray(img, jnp.float32), jnp.float32(magnitude),
                               jnp.asarray(negate)))
  diff = np.abs(got - ref)
  if op in ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'):
    assert diff.max() <= 1 and diff.mean() < 0.02, (op, diff.max(), diff.mean())
  else:
    np.testing.assert_array_equal(got, ref, err_msg=op)


@pytest.mark.parametrize('magnitude,negate', [(9.3, False), (4.2, True), (0.0, False),
                                               (10.0, True)])
def test_level_args_follow_timms_level_rules(magnitude, negate):
  """level_args against timm's level functions written out (_timm_arg; no timm needed)."""
  for op in ra.OPS:
    if op in ('AutoContrast', 'Equalize', 'Invert'):
      continue
    got = float(ra.level_args(op, jnp.float32(magnitude), jnp.asarray(negate)))
    np.testing.assert_allclose(got, _timm_arg(op, magnitude, negate), rtol=1e-6, atol=1e-7,
                               err_msg=op)


def test_level_functions_are_timms():
  aa = _timm_module('auto_augment')
  for op in ra.OPS:
    fn = aa.LEVEL_TO_ARG[op]
    if fn is None:
      continue
    for magnitude, negate in ((9.3, False), (4.2, True)):
      aa.random.random = (lambda v: lambda: v)(0.9 if negate else 0.1)
      want = fn(magnitude, {'translate_pct': 0.45})[0]
      got = float(ra.level_args(op, jnp.float32(magnitude), jnp.asarray(negate)))
      np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=op)


def test_swin_train_transform_shapes_and_erasing_statistics():
  images = jnp.asarray(np.stack([_image(i, 40, 40) for i in range(64)]))
  out = ra.swin_train_transform(jax.random.PRNGKey(0), images, image_size=48,
                                reprob=1.0)
  assert out.shape == (64, 48, 48, 3) and out.dtype == jnp.float32
  small = ra.swin_train_transform(jax.random.PRNGKey(0), images[:, :32, :32], image_size=32,
                                  auto_augment='none', reprob=0.0)
  # RandomCrop(32, padding=4) + flip only: every row of the output is a shifted input row.
  assert small.shape == (64, 32, 32, 3)
  # Erased boxes hold N(0, 1) noise: with reprob 1 every image has some erased area, whose
  # size follows U(0.02, 1/3) of the image.
  x = np.stack([_image(i, 32, 32) for i in range(1)]).astype(np.float32)
  erased = np.asarray(jax.vmap(lambda k: ra.random_erasing(k, jnp.zeros((32, 32, 3)), 1.0))(
      jax.random.split(jax.random.PRNGKey(1), 200)))
  frac = (erased[..., 0] != 0).mean(axis=(1, 2))
  assert 0.02 * 0.8 < frac.min() and frac.max() < 1 / 3 + 0.05
  np.testing.assert_allclose(frac.mean(), (0.02 + 1 / 3) / 2, atol=0.04)
  del x


# ---------------------------------------------------------------------------- configs

def _reference_lambda(epoch, epochs=102, warmup=10, warmup_lr=5e-7, lr=1e-4, fge_lr=1e-4,
                      fge_epochs=102):
  """The reference's linear_warmup_cosine+cosine LambdaLR factor (utils/lr_schedule.py)."""
  if epoch < epochs:
    if epoch < warmup:
      alpha = epoch / warmup
      return (1 - alpha) * (warmup_lr / lr) + alpha
    return 0.5 * (1 + math.cos((epoch - warmup) / (epochs - warmup) * math.pi))
  return 0.5 * (1 + math.cos(((epoch - epochs) % fge_epochs) / fge_epochs * math.pi)) * (
      fge_lr / lr)


def test_swin_configs_have_the_references_effective_settings():
  from configs import swin_single, swin_sse, swin_starsse  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import schedules  # pylint: disable=g-import-not-at-top
  single, sse, star = swin_single.get_config(), swin_sse.get_config(), swin_starsse.get_config()
  for c in (single, sse, star):
    assert (c.model, c.width, c.image_size, c.optimizer, c.batch_size) == (
        'SwinTiny', 96, 224, 'adamw', 256)
    assert (c.lr, c.wd, c.warmup_lr, c.warmup_epochs, c.epochs) == (1e-4, 0.25, 5e-7, 10, 102)
    assert (c.clip_grad, c.label_smoothing, c.simmim, c.layer_decay) == (5.0, 0.1, False, 0.85)
    assert c.drop_last is True  # SwinBaseConfig.drop_last, not overridden by the three
    assert (c.transform_name, c.interpolation) == ('swin_imagenet', 'bicubic')
    assert (c.aug.auto_augment, c.aug.reprob, c.aug.remode, c.aug.mixup, c.aug.cutmix,
            c.aug.mixup_prob, c.aug.mixup_switch_prob, c.aug.mixup_mode) == (
                'rand-m9-mstd0.5-inc1', 0.25, 'pixel', 0.8, 1.0, 1.0, 0.5, 'batch')
  assert (single.scheduler, single.num_fge) == ('linear_warmup_cosine', 1)
  for c, star_fge in ((sse, False), (star, True)):
    assert (c.scheduler, c.num_fge, c.fge_epochs, c.fge_lr, c.fge_warmup_epochs,
            c.star_fge) == ('linear_warmup_cosine+cosine', 5, 102, 1e-4, 0, star_fge)
  fn = schedules.create_learning_rate_fn(star, 3)
  for epoch in (0, 1, 9, 10, 50, 101, 102, 150, 203, 204, 509):
    np.testing.assert_allclose(float(fn(3 * epoch + 1)), 1e-4 * _reference_lambda(epoch),
                               rtol=1e-5, atol=1e-12, err_msg=f'epoch {epoch}')
