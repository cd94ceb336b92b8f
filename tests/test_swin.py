"""Flax Swin against an independent PyTorch twin (tests/torch_swin.py), torch and formulas.

Model: logits and the five feature slots within 1e-4 of PyTorch in eval mode (SwinNano
at 32 px, and Swin-Tiny at 224 px once), gradients, Microsoft's parameter count, drop
path (which samples and branches survive, the 1/keep scaling, the linear rate rule),
bfloat16 near float32, members under vmap equal separate applies, stop-gradient cuts.
Checkpoints: exact torch -> flax -> torch round trips (buffers included), SimMIM
prefixes, table resizing against torch's bicubic interpolate and against cubic
polynomials (SimMIM's spline), one-line errors.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert_byol
from enstransfer_jax import checkpoints, models, swin_checkpoints
from enstransfer_jax.models import swin
from torch_resnet import TorchResNet
from torch_swin import Block, TorchSwin, randomize_

TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]
NANO = swin.ARCHS['SwinNano']


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision('highest'):  # TF32 on GPUs otherwise; no-op on CPU
    yield


def _torch_model(arch='SwinNano', classes=10, seed=0, **overrides):
  spec = swin.ARCHS[arch]
  kw = dict(embed_dim=spec.embed_dim, depths=spec.depths, num_heads=spec.num_heads,
            window_size=spec.window_size, patch_size=spec.patch_size,
            image_size=spec.image_size)
  kw.update(overrides)
  torch.manual_seed(seed)
  return randomize_(TorchSwin(classes, **kw), seed=seed).eval()


def _to_flax(tm, arch='SwinNano', **kw):
  variables, _ = swin_checkpoints.torch_to_flax(
      tm.state_dict(), arch, numpy_fn=lambda t: t.detach().numpy(), **kw)
  return variables


def _images(n, size, seed=1):
  x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _assert_parity(flax_out, torch_out):
  (logits, feats), (t_logits, t_feats) = flax_out, torch_out
  assert len(feats) == 5 and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), t_logits.detach().numpy(), rtol=0, atol=TOL)
  for f, t in zip(feats, t_feats):
    if t is None:
      assert f is None
      continue
    assert f.shape == tuple(t.shape) and f.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(f), t.detach().numpy(), rtol=0, atol=TOL)


@functools.lru_cache(maxsize=None)
def _nano():
  tm = _torch_model()
  return tm, models.create_model('SwinNano', 10), _to_flax(tm)


def test_eval_parity_nano():
  tm, model, variables = _nano()
  x, xj = _images(3, 32)
  out = jax.jit(model.apply)(variables, xj)
  with torch.no_grad():
    ref = tm(x)
  _assert_parity(out, ref)
  feats = out[1]
  assert [None if f is None else f.shape for f in feats] == [
      (3, 8, 8, 32), (3, 8, 8, 32), None, None, (3, 32)]


def test_eval_parity_swin_tiny_224():
  tm = _torch_model('SwinTiny', classes=1000)
  model = models.create_model('SwinTiny', 1000)
  variables = _to_flax(tm, 'SwinTiny')
  x, xj = _images(2, 224)
  out = jax.jit(model.apply)(variables, xj)
  with torch.no_grad():
    ref = tm(x)
  _assert_parity(out, ref)
  assert [f.shape for f in out[1]] == [(2, 28, 28, 192), (2, 14, 14, 384), (2, 7, 7, 768),
                                       (2, 7, 7, 768), (2, 768)]
  # Microsoft's swin_tiny_patch4_window7_224: 28,288,354 parameters.
  n = sum(np.size(a) for a in jax.tree_util.tree_leaves(variables['params']))
  assert n == 28_288_354 == sum(p.numel() for p in tm.parameters())


def test_gradients_match_torch_and_stop_gradient_cuts():
  tm, model, variables = _nano()
  x, xj = _images(2, 32)
  w = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
  tm.zero_grad()
  (tm(x)[0] * torch.from_numpy(w)).sum().backward()
  @functools.partial(jax.jit, static_argnums=1)
  @functools.partial(jax.grad)
  def grad_fn(p, cut):
    return jnp.sum(model.apply({'params': p, 'batch_stats': {}}, xj,
                               stop_gradient_after=cut)[0] * w)

  grads = grad_fn(variables['params'], None)
  got = swin_checkpoints.flax_to_torch({'params': grads})
  for key, p in tm.named_parameters():
    scale = max(float(p.grad.abs().max()), 1e-3)
    np.testing.assert_allclose(got[key].numpy(), p.grad.numpy(), atol=1e-4 * scale, err_msg=key)
  cut = grad_fn(variables['params'], 'layers.0')
  for name in ('patch_embed', 'layers.0'):
    assert not any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(cut[name]))
  for name in ('layers.1', 'norm', 'head'):
    for a, b in zip(jax.tree_util.tree_leaves(cut[name]),
                    jax.tree_util.tree_leaves(grads[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_drop_path_drops_samples_and_branches_independently_and_rescales():
  """One shifted block (rate 0.3) on 2000 copies of one input: each output must be one of
  the four torch outputs with the two branches kept or dropped (kept ones x 1/0.7), with
  frequencies keep^2, keep(1-keep), ... (binomial, 5 sigma)."""
  rate, n = 0.3, 2000
  tblock = Block(16, 8, 2, 4, 2, rate)
  randomize_(tblock, seed=3)
  x = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(4))
  candidates = []
  for d1 in (0, 1):
    for d2 in (0, 1):
      masks = iter((d1, d2))
      tblock.drop_path.forward = lambda y, m=masks: y * next(m) / (1 - rate)
      with torch.no_grad():
        candidates.append(tblock(x).numpy().reshape(8, 8, 16))
  block = swin.SwinBlock(2, 4, 2, rate)
  params = {'params': _block_params(tblock)}
  xj = jnp.broadcast_to(jnp.asarray(x.numpy().reshape(1, 8, 8, 16)), (n, 8, 8, 16))
  train = jax.jit(lambda v, x, key: block.apply(v, x, True, rngs={'dropout': key}))
  out = np.asarray(train(params, xj, jax.random.PRNGKey(5)))
  dist = np.stack([np.abs(out - c).max(axis=(1, 2, 3)) for c in candidates], 1)
  assert np.all(dist.min(1) < 1e-4)  # every sample is one of the four combinations
  counts = np.bincount(dist.argmin(1), minlength=4) / n
  keep = 1 - rate
  expected = np.array([rate * rate, rate * keep, keep * rate, keep * keep])
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - expected) / n))
  # deterministic in the key; eval mode and rate 0 draw nothing
  again = train(params, xj, jax.random.PRNGKey(5))
  np.testing.assert_array_equal(np.asarray(again), out)
  with torch.no_grad():
    tblock.drop_path.forward = lambda y: y
    ref = tblock(x).numpy().reshape(1, 8, 8, 16)
  np.testing.assert_allclose(np.asarray(block.apply(params, xj[:1], False)), ref, atol=1e-5)
  zero = swin.SwinBlock(2, 4, 2, 0.0)
  np.testing.assert_allclose(np.asarray(zero.apply(params, xj[:1], True)), ref, atol=1e-5)


def _block_params(tblock):
  sd = {k: v.numpy() for k, v in tblock.state_dict().items()}
  lin = lambda name: {'kernel': sd[f'{name}.weight'].T, 'bias': sd[f'{name}.bias']}
  ln = lambda name: {'scale': sd[f'{name}.weight'], 'bias': sd[f'{name}.bias']}
  return {'norm1': ln('norm1'), 'norm2': ln('norm2'),
          'attn': {'qkv': lin('attn.qkv'), 'proj': lin('attn.proj'),
                   'relative_position_bias_table': sd['attn.relative_position_bias_table']},
          'mlp': {'fc1': lin('mlp.fc1'), 'fc2': lin('mlp.fc2')}}


def test_drop_path_rates_rise_linearly_and_need_the_dropout_stream():
  model = models.create_model('SwinTiny', 10)
  variables = jax.eval_shape(lambda k: models.init_variables(model, k), jax.random.PRNGKey(0))
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, swin.SwinBlock) and context.method_name == '__call__':
      rates.append(context.module.drop_path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3)), train=True,
                                         rngs={swin.DROPOUT_RNG: jax.random.PRNGKey(0)}),
                   variables)
  np.testing.assert_allclose(rates, torch.linspace(0, 0.1, 12).numpy(), atol=1e-7)
  _, model, variables = _nano()
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), train=True)


def test_bfloat16_close_to_float32():
  tm, _, variables = _nano()
  x, xj = _images(4, 32)
  bf16 = models.create_model('SwinNano', 10, dtype='bfloat16')
  logits, feats = jax.jit(bf16.apply)(variables, xj)
  assert logits.dtype == jnp.float32 and all(f is None or f.dtype == jnp.float32 for f in feats)
  with torch.no_grad():
    ref_logits, ref_feats = tm(x)
  for got, ref in ((logits, ref_logits), (feats[1], ref_feats[1]), (feats[4], ref_feats[4])):
    ref = ref.numpy()
    assert 0 < np.abs(np.asarray(got) - ref).max() < 0.05 * np.abs(ref).max()  # bf16: ~3 digits
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), xj))
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(shapes))


def test_vmap_over_members_equals_separate_applies():
  _, model, v1 = _nano()
  v2 = models.init_variables(model, jax.random.PRNGKey(7))
  _, xj = _images(2, 32)
  stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), v1, v2)
  keys = jax.random.split(jax.random.PRNGKey(3), 2)

  def train_apply(v, key):
    return model.apply(v, xj, train=True, rngs={'dropout': key}, mutable=['batch_stats'])

  (logits, feats), state = jax.jit(jax.vmap(train_apply))(stacked, keys)
  assert state == {'batch_stats': {}}
  eval_apply = lambda v: model.apply(v, xj)[0]
  eval_logits = jax.jit(jax.vmap(eval_apply))(stacked)
  single_train, single_eval = jax.jit(train_apply), jax.jit(eval_apply)
  for i, v in enumerate((v1, v2)):
    (l_i, f_i), _ = single_train(v, keys[i])
    np.testing.assert_allclose(np.asarray(logits[i]), np.asarray(l_i), atol=1e-5)
    np.testing.assert_allclose(np.asarray(feats[0][i]), np.asarray(f_i[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(eval_logits[i]), np.asarray(single_eval(v)),
                               atol=1e-5)
  assert np.abs(np.asarray(logits[0] - eval_logits[0])).max() > 1e-3  # drop path acted


def test_registry_init_and_head():
  assert models.canonical_name('swin_tiny') == 'SwinTiny'
  assert models.canonical_name('ImageNetResNet50') == 'ResNet50'
  with pytest.raises(ValueError, match='valid names: .*SwinTiny'):
    models.create_model('SwinHuge', 10)
  model = models.create_model('SwinTiny', 100)
  assert (model.embed_dim, model.depths, model.num_heads, model.window_size,
          model.patch_size, model.image_size, model.drop_path_rate) == (
              96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 4, 224, 0.1)
  assert models.module_names(model) == swin.MODULE_NAMES
  variables = models.init_variables(models.create_model('SwinNano', 100),
                                    jax.random.PRNGKey(0))
  p = variables['params']
  assert variables['batch_stats'] == {} and models.head_name(variables) == 'head'
  qkv = np.asarray(p['layers.1']['blocks.0']['attn']['qkv']['kernel'])
  np.testing.assert_allclose(qkv.std(), 0.02, rtol=0.05)  # trunc_normal_(std=.02)
  assert not np.any(np.asarray(p['layers.1']['blocks.0']['attn']['qkv']['bias']))
  assert np.all(np.asarray(p['norm']['scale']) == 1)
  bound = 1 / np.sqrt(3 * 2 * 2)  # torch Conv2d default: U(-1/sqrt(fan_in), +)
  proj = np.asarray(p['patch_embed']['proj']['kernel'])
  assert np.abs(proj).max() <= bound and np.abs(proj).max() > 0.8 * bound
  new = models.replace_head(variables, 7, jax.random.PRNGKey(1))
  kernel = np.asarray(new['params']['head']['kernel'])
  assert kernel.shape == (32, 7) and np.abs(kernel).max() <= 1 / np.sqrt(32)
  assert new['batch_stats'] == {} and p['head']['kernel'].shape == (32, 100)


def test_bad_arguments_give_one_clear_error():
  _, model, variables = _nano()
  with pytest.raises(ValueError, match='takes 32x32 images'):
    model.apply(variables, jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match='NHWC'):
    model.apply(variables, jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match='stop_gradient_after'):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), stop_gradient_after='layers.3')
  with pytest.raises(ValueError, match='not divisible by its 3 heads'):
    models.create_model('SwinTiny', 10, width=64)
  with pytest.raises(ValueError, match='cannot tile'):
    models.create_model('SwinTiny', 10, image_size=96)


# Checkpoints.

def _save(tmp_path, sd, name='in.pt', wrap='model'):
  path = tmp_path / name
  torch.save({wrap: sd} if wrap else sd, path)
  return path


def test_round_trip_torch_flax_torch_is_exact(tmp_path):
  tm = _torch_model(seed=2)
  sd = tm.state_dict()
  assert convert_byol.main([str(_save(tmp_path, sd)), str(tmp_path / 'out')]) == 0  # inferred
  meta = json.loads((tmp_path / 'out' / 'metadata.json').read_text())
  assert (meta['architecture'], meta['image_size'], meta['window_size'], meta['width'],
          meta['num_classes'], meta['head_replaced']) == ('SwinNano', 32, 4, 16, 10, False)
  assert convert_byol.main(['--to-torch', str(tmp_path / 'out'), str(tmp_path / 'back.pt')]) == 0
  back = torch.load(tmp_path / 'back.pt')['model_state']
  assert list(back) == list(sd)  # Microsoft's key order, buffers included
  for k, v in sd.items():
    assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
  fresh = TorchSwin(10, 16, (2, 2), (2, 4), 4, 2, 32)
  fresh.load_state_dict(back, strict=True)
  # Swin-Tiny's name map is the twin's state dict (attn_mask only where windows shift).
  model = models.create_model('SwinTiny', 1000)
  shapes = jax.eval_shape(lambda k: models.init_variables(model, k), jax.random.PRNGKey(0))
  table = swin_checkpoints.name_map(shapes['params'])
  ref = TorchSwin(1000).state_dict()
  assert list(table) == [k for k in ref if not k.endswith(('relative_position_index',
                                                           'attn_mask'))]
  assert sum(k.endswith('attn_mask') for k in ref) == 5  # stage 3 (7 px) has no shift


def test_save_load_as_the_engine_does(tmp_path):
  _, model, variables = _nano()
  checkpoints.save_converted(tmp_path / 'm', variables, {'architecture': 'SwinNano'})
  arch, loaded = checkpoints.load_pretrained(tmp_path / 'm')
  assert arch == 'SwinNano' and loaded['batch_stats'] == {}
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_simmim_prefix_and_headless_encoder(tmp_path):
  tm = _torch_model(seed=4)
  sd = {f'encoder.{k}': v for k, v in tm.state_dict().items() if not k.startswith('head.')}
  sd['encoder.mask_token'] = torch.zeros(1, 1, 16)
  sd['decoder.0.weight'] = torch.zeros(12, 32, 1, 1)
  path = _save(tmp_path, sd)
  assert convert_byol.main([str(path), str(tmp_path / 'out'), '--arch', 'SwinNano',
                            '--num-classes', '5']) == 0
  meta = json.loads((tmp_path / 'out' / 'metadata.json').read_text())
  assert meta['simmim'] and meta['head_replaced'] and meta['num_classes'] == 5
  _, variables = checkpoints.load_pretrained(tmp_path / 'out')
  ref = _to_flax(tm)
  for name in ('patch_embed', 'layers.0', 'layers.1', 'norm'):
    for a, b in zip(jax.tree_util.tree_leaves(variables['params'][name]),
                    jax.tree_util.tree_leaves(ref['params'][name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  head = np.asarray(variables['params']['head']['kernel'])
  assert head.shape == (32, 5) and np.abs(head).max() <= 1 / np.sqrt(32)
  v1000, info = swin_checkpoints.torch_to_flax(sd, 'SwinNano', numpy_fn=lambda t: t.numpy())
  assert info['simmim'] and v1000['params']['head']['bias'].shape == (1000,)  # reference: 1000
  # A SimMIM table of another window goes through SimMIM's geometric spline, not bicubic.
  key = 'encoder.layers.1.blocks.1.attn.relative_position_bias_table'
  sd[key] = torch.randn(25, 4, generator=torch.Generator().manual_seed(8))
  v, info = swin_checkpoints.torch_to_flax(sd, 'SwinNano', numpy_fn=lambda t: t.numpy())
  got = np.asarray(v['params']['layers.1']['blocks.1']['attn']['relative_position_bias_table'])
  assert info['resized'] == [key[len('encoder.'):]]
  np.testing.assert_array_equal(got, swin_checkpoints.geometric_resize_table(sd[key].numpy(), 49))
  assert np.abs(got - swin_checkpoints.bicubic_resize_table(sd[key].numpy(), 49)).max() > 0.01


def test_table_resize_equals_torch_bicubic(tmp_path):
  """A checkpoint with window-3 tables (5x5) loaded into window-4 SwinNano (7x7): each table
  as the reference's load_pretrained_swin computes it with F.interpolate(mode='bicubic')."""
  sd = _torch_model(seed=5).state_dict()
  g = torch.Generator().manual_seed(6)
  for k in [k for k in sd if k.endswith('relative_position_bias_table')]:
    sd[k] = torch.randn(25, sd[k].shape[1], generator=g)
  variables, info = swin_checkpoints.torch_to_flax(sd, 'SwinNano', numpy_fn=lambda t: t.numpy())
  assert len(info['resized']) == 4 and not info['simmim']
  for key in info['resized']:
    old = sd[key]
    ref = torch.nn.functional.interpolate(old.permute(1, 0).view(1, -1, 5, 5), size=(7, 7),
                                          mode='bicubic').view(-1, 49).permute(1, 0)
    path = key.split('.')
    got = variables['params'][f'{path[0]}.{path[1]}'][f'{path[2]}.{path[3]}']['attn'][
        'relative_position_bias_table']
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), atol=1e-5)
  down = swin_checkpoints.bicubic_resize_table(np.asarray(sd[info['resized'][0]]), 9)
  ref = torch.nn.functional.interpolate(sd[info['resized'][0]].permute(1, 0).view(1, -1, 5, 5),
                                        size=(3, 3), mode='bicubic').view(-1, 9).permute(1, 0)
  np.testing.assert_allclose(down, ref.numpy(), atol=1e-5)


def test_simmim_geometric_resize_reproduces_cubics():
  """SimMIM's interpolation is an interpolating bicubic spline through source offsets that
  grow geometrically: a separable cubic sampled there comes back exactly at the target's
  integer offsets. Window 6 (11x11, SimMIM's 192 px pre-training) -> window 7 (13x13)."""
  src, dst = 11, 13
  # positions from the formula: q with sum_{i<5} q^i = dst // 2, offsets 1, 1+q, ...
  q = 1.01
  for _ in range(60):
    q_next = q - (sum(q**i for i in range(src // 2)) - dst // 2) / sum(
        i * q**(i - 1) for i in range(1, src // 2))
    q = q_next
  dis = np.cumsum([q**i for i in range(src // 2)])
  x = np.concatenate([-dis[::-1], [0.0], dis])
  got_x, target = swin_checkpoints.simmim_positions(src, dst)
  np.testing.assert_allclose(got_x, x, atol=1e-5)
  np.testing.assert_array_equal(target, np.arange(-6.0, 7.0))
  f = lambda t: 0.01 * t**3 - 0.05 * t**2 + 0.3 * t + 1.0
  g = lambda t: -0.02 * t**3 + 0.1 * t + 0.5
  table = np.stack([(f(x)[:, None] * g(x)[None, :]).reshape(-1),
                    (g(x)[:, None] * f(x)[None, :]).reshape(-1)], 1).astype(np.float32)
  got = swin_checkpoints.geometric_resize_table(table, dst * dst)
  ref = np.stack([(f(target)[:, None] * g(target)[None, :]).reshape(-1),
                  (g(target)[:, None] * f(target)[None, :]).reshape(-1)], 1)
  np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
  assert np.abs(got - swin_checkpoints.bicubic_resize_table(table, dst * dst)).max() > 0.01


def test_resnet_state_dict_given_swin_arch_is_one_error_line(tmp_path):
  path = _save(tmp_path, TorchResNet('ResNet18', 10, 8).state_dict(), wrap='model_state')
  r = subprocess.run([sys.executable, 'convert_byol.py', '--arch', 'SwinTiny', str(path),
                      str(tmp_path / 'out')], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 2 and not (tmp_path / 'out').exists()  # a bad input (convert_byol.py)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert ("missing 'patch_embed.proj.weight' (+" in lines[0]
          and "unexpected 'conv1.weight' (+" in lines[0]), lines[0]
  swin_sd = _torch_model().state_dict()
  with pytest.raises(ValueError, match="missing 'conv1.weight'"):
    checkpoints.torch_to_flax(swin_sd, 'ResNet18')
  with pytest.raises(ValueError, match='Swin checkpoints only'):
    checkpoints.convert_file(path, tmp_path / 'o2', image_size=224)
