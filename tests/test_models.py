"""Flax ResNet against an independent PyTorch twin (tests/torch_resnet.py) and formulas.

Parity: logits and the five feature maps within 1e-4 of PyTorch (eval and train
mode), updated BN running means and variances, BN frozen per module, gradients
above a stop_gradient cut; parameter counts equal torchvision's published ones.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from enstransfer_jax.checkpoints import flax_to_torch, torch_to_flax
from enstransfer_jax.models import BatchNorm, create_model, init_variables, replace_head
from torch_resnet import TorchResNet, randomize_

TOL = 1e-4
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _full_precision():
  # On GPUs JAX's default float32 conv/matmul precision is TF32 (~1e-3 relative);
  # parity needs true float32. A no-op on CPU.
  with jax.default_matmul_precision('highest'):
    yield


@functools.lru_cache(maxsize=None)
def _torch_model(arch, width, size, seed=0):
  torch.manual_seed(seed)
  model = TorchResNet(arch, NUM_CLASSES, width)
  return randomize_(model, torch.randn(8, 3, size, size), seed=seed)


def _pair(arch, width, size):
  """(fresh torch copy with random weights and BN stats, flax model, flax variables)."""
  tm = _torch_model(arch, width, size)
  fresh = TorchResNet(arch, NUM_CLASSES, width)
  fresh.load_state_dict(tm.state_dict())
  fresh.eval()
  return fresh, create_model(arch, NUM_CLASSES, width=width), torch_to_flax(
      tm.state_dict(), arch)


def _images(n, size, seed=1):
  x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _nhwc(t):
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _assert_outputs_close(flax_out, torch_out):
  (logits, feats), (t_logits, t_feats) = flax_out, torch_out
  assert logits.dtype == jnp.float32 and len(feats) == 5
  np.testing.assert_allclose(np.asarray(logits), _nhwc(t_logits), rtol=0, atol=TOL)
  for f, t in zip(feats, t_feats):
    assert f.shape == _nhwc(t).shape and f.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(f), _nhwc(t), rtol=0, atol=TOL)


def test_param_counts_equal_torchvision():
  # torchvision.models.resnet{18,34,50}(): published parameter counts.
  published = {'ResNet18': 11_689_512, 'ResNet34': 21_797_672, 'ResNet50': 25_557_032}
  for arch, count in published.items():
    model = create_model(arch, 1000)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 32, 32, 3))))
    assert sum(x.size for x in jax.tree_util.tree_leaves(shapes['params'])) == count
    bn_channels = sum(x.size for x in jax.tree_util.tree_leaves(shapes['batch_stats']))
    torch_buffers = sum(b.numel() for n, b in TorchResNet(arch, 1000, 8).named_buffers()
                        if 'running' in n) * 8
    assert bn_channels == torch_buffers  # width 8 -> 64 scales every BN by 8


@pytest.mark.parametrize('arch,width,size,n', [
    ('ResNet50', 64, 224, 2),  # full size, once
    ('ResNet18', 16, 224, 2),
    ('ResNet18', 16, 32, 4),
    ('ResNet34', 8, 32, 2),
    ('ResNet50', 8, 32, 4),
])
def test_eval_parity(arch, width, size, n):
  tm, model, variables = _pair(arch, width, size)
  x, xj = _images(n, size)
  with torch.no_grad():
    expected = tm(x)
  _assert_outputs_close(jax.jit(model.apply)(variables, xj), expected)


# Train-mode BN divides by the batch std: the 32 px ResNet-50 would normalise
# layer4 over 4 values only (1x1 maps), which amplifies rounding; 64 px gives 16.
@pytest.mark.parametrize('arch,width,size,frozen', [
    ('ResNet18', 8, 32, ()),
    ('ResNet50', 8, 64, ()),
    ('ResNet18', 8, 32, ('bn1', 'layer1', 'layer3')),
])
def test_train_parity_and_running_stats(arch, width, size, frozen):
  tm, model, variables = _pair(arch, width, size)
  x, xj = _images(4, size)
  before = {k: v.clone() for k, v in tm.state_dict().items()}
  tm.train()
  for name in frozen:  # torch reference of frozen_bn: those modules in eval mode
    getattr(tm, name).eval()
  with torch.no_grad():
    expected = tm(x)
  step = jax.jit(functools.partial(model.apply, train=True, frozen_bn=frozen,
                                   mutable=['batch_stats']))
  out, updates = step(variables, xj)
  _assert_outputs_close(out, expected)
  got = flax_to_torch({'params': variables['params'], 'batch_stats': updates['batch_stats']})
  ref = tm.state_dict()
  changed = 0
  for key in ref:
    if 'running' not in key:
      continue
    np.testing.assert_allclose(got[key].numpy(), ref[key].numpy(), rtol=0, atol=TOL,
                               err_msg=key)
    frozen_key = key.split('.')[0] in frozen
    if frozen_key:  # exactly untouched
      assert torch.equal(got[key], before[key]), key
    else:
      changed += int(not torch.allclose(ref[key], before[key], atol=1e-3))
  assert changed > 10  # the update is not trivial


def test_batchnorm_module_matches_torch_over_steps():
  rng = np.random.default_rng(0)
  tbn = torch.nn.BatchNorm2d(5)
  bn = BatchNorm()
  x0 = rng.normal(size=(3, 4, 2, 5)).astype(np.float32)
  variables = bn.init(jax.random.PRNGKey(0), x0, use_running_average=False)
  for step in range(3):
    x = (rng.normal(size=(3, 4, 2, 5)) * (step + 1) + step).astype(np.float32)
    y, upd = bn.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
    variables = {'params': variables['params'], **upd}
    ty = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(np.asarray(y), ty.transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['mean'], tbn.running_mean, atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['var'], tbn.running_var, atol=1e-5)
  with pytest.raises(ValueError, match='more than 1 value per channel'):
    bn.apply(variables, x0[:1, :1, :1], use_running_average=False, mutable=['batch_stats'])


def _grads(model, variables, xj, cut, use_map=True):
  def loss(params):
    logits, feats = model.apply({**variables, 'params': params}, xj,
                                stop_gradient_after=cut)
    return jnp.sum(logits**2) + (jnp.mean(feats[1]**2) if use_map else 0.0)
  return jax.jit(jax.grad(loss))(variables['params'])


def test_stop_gradient_after():
  tm, model, variables = _pair('ResNet18', 8, 32)
  x, xj = _images(2, 32)
  grads = _grads(model, variables, xj, 'layer2')
  nonzero = {k: any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(v))
             for k, v in grads.items()}
  assert nonzero == {'conv1': False, 'bn1': False, 'layer1': False, 'layer2': False,
                     'layer3': True, 'layer4': True, 'fc': True}
  # Above the cut, the gradient is torch's (eval mode, same loss).
  logits, maps = tm(x)
  (logits.pow(2).sum() + maps[1].pow(2).mean()).backward()
  ref = {k: p.grad for k, p in tm.named_parameters()}
  got = flax_to_torch({'params': grads, 'batch_stats': variables['batch_stats']})
  for key in ('layer3.1.conv2.weight', 'layer4.0.downsample.0.weight', 'fc.weight'):
    scale = float(ref[key].abs().max())
    np.testing.assert_allclose(got[key].numpy(), ref[key].numpy(), atol=1e-4 * scale)
  all_zero = _grads(model, variables, xj, 'fc', use_map=False)
  assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(all_zero))


def test_init_follows_torchvision():
  model = create_model('ResNet18', 100, width=16)
  variables = init_variables(model, jax.random.PRNGKey(0))
  params = variables['params']
  kernel = np.asarray(params['layer4']['1']['conv2']['kernel'])  # 3x3x128x128, HWIO
  fan_out = 3 * 3 * kernel.shape[-1]  # torch kaiming_normal_(mode='fan_out', 'relu')
  assert abs(kernel.mean()) < 1e-3
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / fan_out), rtol=0.01)
  bound = 1 / np.sqrt(128)  # torch nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  for leaf in (params['fc']['kernel'], params['fc']['bias']):
    leaf = np.asarray(leaf)
    assert leaf.min() >= -bound and leaf.max() <= bound and leaf.max() > 0.8 * bound
  np.testing.assert_allclose(np.asarray(params['fc']['kernel']).std(),
                             bound / np.sqrt(3), rtol=0.05)
  assert np.all(np.asarray(params['layer1']['0']['bn1']['scale']) == 1)
  assert np.all(np.asarray(params['layer1']['0']['bn1']['bias']) == 0)
  stats = variables['batch_stats']['layer2']['0']['downsample']['1']
  assert np.all(np.asarray(stats['mean']) == 0) and np.all(np.asarray(stats['var']) == 1)


def test_replace_head():
  _, _, variables = _pair('ResNet18', 8, 32)
  new = replace_head(variables, 7, jax.random.PRNGKey(3))
  kernel, bias = np.asarray(new['params']['fc']['kernel']), np.asarray(new['params']['fc']['bias'])
  assert kernel.shape == (64, 7) and bias.shape == (7,)
  assert np.abs(kernel).max() <= 1 / 8 and np.abs(bias).max() <= 1 / 8
  assert new['params']['layer1'] is variables['params']['layer1']
  assert variables['params']['fc']['kernel'].shape == (64, NUM_CLASSES)  # not mutated


def test_bfloat16_compute_float32_outputs():
  tm, _, variables = _pair('ResNet18', 8, 32)
  x, xj = _images(2, 32)
  bf16 = create_model('ResNet18', NUM_CLASSES, width=8, dtype='bfloat16')
  logits, feats = jax.jit(bf16.apply)(variables, xj)
  assert logits.dtype == jnp.float32 and all(f.dtype == jnp.float32 for f in feats)
  with torch.no_grad():
    ref_logits, ref_maps = tm(x)
  for got, ref in ((logits, ref_logits), (feats[4], ref_maps[4])):  # bf16: ~3 digits
    ref = ref.numpy()
    assert np.abs(np.asarray(got) - ref).max() < 0.05 * np.abs(ref).max()
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), xj))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))


def test_bad_arguments_give_one_clear_error():
  with pytest.raises(ValueError, match='valid names: ResNet18, ResNet34, ResNet50'):
    create_model('ResNet101', 10)
  assert create_model('ImageNetResNet50', 10).arch == 'ResNet50'
  assert create_model('resnet18', 10).arch == 'ResNet18'
  for kwargs in ({'width': 0}, {'dtype': 'int32'}):
    with pytest.raises(ValueError):
      create_model('ResNet18', 10, **kwargs)
  with pytest.raises(ValueError, match='num_classes'):
    create_model('ResNet18', 0)
  _, model, variables = _pair('ResNet18', 8, 32)
  _, xj = _images(2, 32)
  with pytest.raises(ValueError, match='NHWC'):
    model.apply(variables, xj.transpose(0, 3, 1, 2))
  with pytest.raises(ValueError, match='stop_gradient_after'):
    model.apply(variables, xj, stop_gradient_after='layer5')
  with pytest.raises(ValueError, match='tuple of module names'):
    model.apply(variables, xj, frozen_bn='layer1')
