"""Exact PyTorch <-> Flax conversion of Microsoft-layout Swin checkpoints (supervised, SimMIM).

Flax paths equal the torch module names ('layers.0/blocks.1/attn/qkv' is
'layers.0.blocks.1.attn.qkv'); the leaf names map as

  flax leaf                     torch suffix                    layout
  kernel (4-D)                  .weight   patch_embed.proj      HWIO <-> OIHW
  kernel (2-D)                  .weight   Linear                (in, out) <-> (out, in)
  scale                         .weight   LayerNorm
  bias                          .bias
  relative_position_bias_table  .relative_position_bias_table  ((2w-1)^2, heads), as is
  (none)                        .relative_position_index, .attn_mask   buffers: ignored on
                                import, rebuilt on export (int64 / float32, as Microsoft's)

Import (torch_to_flax) follows the reference's models/swin/utils.py: the state dict may
sit under 'model' (or model_state / state_dict, 'module.' stripped); a SimMIM
checkpoint keeps its encoder under 'encoder.' (only those keys are read; its
'mask_token' is dropped); relative_position_index, relative_coords_table and attn_mask
are dropped; a relative_position_bias_table of another size (another window) is
resized per head, by torch's bicubic interpolate (align_corners=False) for supervised
checkpoints and by the SimMIM code's cubic spline on geometrically spaced source
positions for SimMIM ones; absolute_pos_embed is refused (the reference asserts it is
absent). A head of another class count, or none (SimMIM), becomes a fresh torch
nn.Linear-initialised one, as the reference's change_head builds.
"""

import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax.models import swin
from enstransfer_jax.errors import UserError

FORMAT = 'enstransfer_jax.swin/1'
_BUFFERS = ('relative_position_index', 'relative_coords_table', 'attn_mask')
_SIMMIM_ONLY = ('mask_token',)
# Forward order of module and leaf names (Microsoft's state-dict order); digits sort
# numerically, a module's own buffers (attn_mask) before its children.
_ORDER = ('patch_embed', 'layers', 'blocks', 'attn_mask', 'norm1', 'attn',
          'relative_position_bias_table', 'relative_position_index', 'qkv', 'proj',
          'norm2', 'mlp', 'fc1', 'fc2', 'downsample', 'reduction', 'norm', 'head',
          'weight', 'bias')
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
           'relative_position_bias_table': 'relative_position_bias_table'}


def looks_like_swin(keys) -> bool:
  """True for a (possibly SimMIM 'encoder.'-prefixed) Swin state dict."""
  return any(k in ('patch_embed.proj.weight', 'encoder.patch_embed.proj.weight')
             for k in keys)


def infer_arch(state_dict: Mapping[str, Any]) -> str:
  """The registered Swin whose depths, heads and patch size a torch state dict has."""
  sd, _ = strip_simmim(state_dict)
  depths, heads = [], []
  while any(k.startswith(f'layers.{len(depths)}.blocks.') for k in sd):
    i = len(depths)
    depths.append(1 + max(int(k.split('.')[3]) for k in sd
                          if k.startswith(f'layers.{i}.blocks.')))
    table = sd.get(f'layers.{i}.blocks.0.attn.relative_position_bias_table')
    heads.append(int(table.shape[-1]) if table is not None else 0)
  proj = sd.get('patch_embed.proj.weight')
  patch = int(proj.shape[-1]) if proj is not None else 0
  for name, spec in swin.ARCHS.items():
    if (tuple(depths), tuple(heads), patch) == (spec.depths, spec.num_heads, spec.patch_size):
      return name
  raise UserError(f'no registered Swin has depths {tuple(depths)}, heads {tuple(heads)} '
                  f'and patch size {patch} (registered: {", ".join(swin.ARCHS)}); pass '
                  '--arch to see which keys differ')


def _torch_order(key: str):
  return tuple(int(p) if p.isdigit() else _ORDER.index(p) if p in _ORDER else 99
               for p in key.split('.'))


def name_map(params) -> Dict[str, Tuple[str, ...]]:
  """torch key -> flax params path for every parameter, in Microsoft's key order."""
  table = {'.'.join(path[:-1] + (_LEAVES[path[-1]],)): path
           for path in traverse_util.flatten_dict(dict(params))}
  return dict(sorted(table.items(), key=lambda kv: _torch_order(kv[0])))


def _to_torch_layout(a, path):
  a = np.asarray(a)
  if path[-1] == 'relative_position_bias_table':
    return a
  return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _to_flax_layout(a, path):
  if path[-1] == 'relative_position_bias_table':
    return a
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def spec_of(params, image_size: Optional[int] = None) -> Tuple[str, swin.SwinSpec]:
  """(registered name, hyper-parameters) of Swin params; ValueError if none fits."""
  flat = traverse_util.flatten_dict(dict(params))
  depths, heads = [], []
  i = 0
  while f'layers.{i}' in params:
    depths.append(sum(1 for k in params[f'layers.{i}'] if k.startswith('blocks.')))
    heads.append(int(params[f'layers.{i}']['blocks.0']['attn']
                     ['relative_position_bias_table'].shape[-1]))
    i += 1
  kernel = flat[('patch_embed', 'proj', 'kernel')]
  for name, spec in swin.ARCHS.items():
    if (tuple(depths), tuple(heads), spec.patch_size) == (
        spec.depths, spec.num_heads, kernel.shape[0]):
      spec = swin.SwinSpec(int(kernel.shape[-1]), spec.depths, spec.num_heads,
                           spec.window_size, spec.patch_size,
                           image_size or spec.image_size, spec.drop_path_rate,
                           spec.mlp_ratio)
      _check_tables(params, spec)
      return name, spec
  raise UserError(f'no registered Swin has depths {tuple(depths)}, heads {tuple(heads)} '
                  f'and patch size {kernel.shape[0]}; registered: {", ".join(swin.ARCHS)}')


def _check_tables(params, spec):
  for i in range(len(spec.depths)):
    _, window, _ = swin.stage_geometry(spec, i)
    got = params[f'layers.{i}']['blocks.0']['attn']['relative_position_bias_table'].shape[0]
    if got != (2 * window - 1)**2:
      raise UserError(f'layers.{i} has a {got}-row relative-position table but a '
                      f'{spec.image_size} px model needs {(2 * window - 1)**2} (window '
                      f'{window}); give the image size the model was trained at')


def describe(variables, image_size: Optional[int] = None) -> Dict[str, Any]:
  """architecture, num_classes, width (embed dim), image_size, window_size, num_params."""
  params = variables['params']
  name, spec = spec_of(params, image_size)
  return {
      'architecture': name,
      'num_classes': int(params[swin.HEAD]['bias'].shape[0]),
      'width': spec.embed_dim,
      'image_size': spec.image_size,
      'window_size': spec.window_size,
      'num_params': int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
  }


def bicubic_resize_table(table: np.ndarray, rows: int) -> np.ndarray:
  """((2w-1)^2, heads) -> (rows, heads): torch interpolate(mode='bicubic', align_corners=False)
  on each head's (2w-1) x (2w-1) grid, as the reference resizes supervised checkpoints."""
  src, dst = int(math.isqrt(table.shape[0])), int(math.isqrt(rows))
  grid = np.asarray(table, np.float64).T.reshape(-1, src, src)
  out = _cubic_axis(_cubic_axis(grid, dst, 1), dst, 2)
  return out.reshape(-1, rows).T.astype(np.float32)


def _cubic_axis(a, size, axis):
  """Keys' cubic convolution (A = -0.75) along `axis`, half-pixel centres, edge clamping."""
  n = a.shape[axis]
  src = (np.arange(size) + 0.5) * (n / size) - 0.5  # no clamp at 0 for cubic (torch)
  i0 = np.floor(src).astype(np.int64)
  t = src - i0
  A = -0.75

  def near(x):  # |x| <= 1
    return ((A + 2) * x - (A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

  weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
  out = 0.0
  for k, w in zip((-1, 0, 1, 2), weights):
    idx = np.clip(i0 + k, 0, n - 1)
    shape = [1] * a.ndim
    shape[axis] = size
    out = out + np.take(a, idx, axis=axis) * w.reshape(shape)
  return out


def simmim_positions(src: int, dst: int) -> Tuple[np.ndarray, np.ndarray]:
  """(source, target) 1-D positions of the SimMIM code's geometric table interpolation.

  The source offsets grow geometrically (1, 1 + q, 1 + q + q^2, ...) with q found by
  bisection on [1.01, 1.5] so that they span the target's integer offsets -dst//2..dst//2.
  """
  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2.0
    if (1.0 - q**(src // 2)) / (1.0 - q) > dst // 2:
      right = q
    else:
      left = q
  dis, cur = [], 1.0
  for i in range(src // 2):
    dis.append(cur)
    cur += q**(i + 1)
  x = np.array([-d for d in reversed(dis)] + [0.0] + dis)
  t = dst // 2.0
  return x, np.arange(-t, t + 0.1, 1.0)


def geometric_resize_table(table: np.ndarray, rows: int) -> np.ndarray:
  """((2w-1)^2, heads) -> (rows, heads): the SimMIM loader's interpolation, an
  interpolating bicubic spline (FITPACK, s=0; what scipy's retired interp2d(kind='cubic')
  fitted on this grid) through geometrically spaced source positions."""
  from scipy import interpolate  # pylint: disable=g-import-not-at-top
  src, dst = int(math.isqrt(table.shape[0])), int(math.isqrt(rows))
  x, d = simmim_positions(src, dst)
  heads = []
  for h in range(table.shape[1]):
    z = np.asarray(table[:, h], np.float32).reshape(src, src).astype(np.float64)
    spline = interpolate.RectBivariateSpline(x, x, z, kx=3, ky=3, s=0)
    heads.append(spline(d, d).astype(np.float32).reshape(-1))
  return np.stack(heads, axis=1)


def _first(keys):
  if not keys:
    return 'none'
  return repr(keys[0]) + (f' (+{len(keys) - 1} more)' if len(keys) > 1 else '')


def strip_simmim(sd: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool]:
  """(state dict without SimMIM's 'encoder.' prefix and decoder, whether it had one)."""
  if any(k.startswith('encoder.') for k in sd):
    return {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}, True
  return dict(sd), False


def torch_to_flax(state_dict: Mapping[str, Any], arch: str = 'SwinTiny',
                  num_classes: Optional[int] = None, *, rng=None,
                  image_size: Optional[int] = None, simmim: Optional[bool] = None,
                  numpy_fn=np.asarray) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """A Swin state dict -> ({'params', 'batch_stats': {}} of float32 numpy, info).

  `state_dict` is already unwrapped (see checkpoints.unwrap_state_dict); `simmim`
  defaults to whether the keys carry 'encoder.'. The target model is `arch` at
  `image_size` (default the architecture's) with the checkpoint's embed dim; info says
  'simmim', 'resized' (the tables interpolated) and 'head_replaced'.
  """
  sd, prefixed = strip_simmim(state_dict)
  simmim = prefixed if simmim is None else simmim
  sd = {k: numpy_fn(v) for k, v in sd.items()
        if k.split('.')[-1] not in _BUFFERS and k not in _SIMMIM_ONLY}
  if 'absolute_pos_embed' in sd:
    raise UserError('the checkpoint has absolute_pos_embed (ape=True); only Swin without '
                    'absolute position embeddings (the reference asserts ape=False) loads')
  width = int(sd['patch_embed.proj.weight'].shape[0]) if 'patch_embed.proj.weight' in sd \
      else None
  ckpt_classes = int(sd['head.bias'].shape[0]) if 'head.bias' in sd else None
  model = swin.create_model(arch, ckpt_classes or num_classes or 1000, width=width,
                            image_size=image_size)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, model.image_size, model.image_size, 3))))
  table = name_map(shapes['params'])
  head_keys = ('head.weight', 'head.bias')
  missing = [k for k in table if k not in sd and not (ckpt_classes is None and k in head_keys)]
  unexpected = [k for k in sd if k not in table]
  if missing or unexpected:
    dim = f' (embed dim {width})' if width else ''
    raise UserError(f'state dict is not a Microsoft-layout {arch}{dim}: missing '
                    f'{_first(missing)}, unexpected {_first(unexpected)}')
  flat, resized = {}, []
  for key, path in table.items():
    if key not in sd:
      continue  # a SimMIM encoder has no head
    value = sd[key]
    expected = _to_torch_layout(np.empty(_shape_at(shapes['params'], path), np.uint8), path).shape
    if path[-1] == 'relative_position_bias_table' and value.shape != expected:
      if value.ndim != 2 or value.shape[1] != expected[1]:
        raise UserError(f'{key!r} has shape {tuple(value.shape)}; the model needs '
                        f'{expected} (the number of heads must match)')
      resize = geometric_resize_table if simmim else bicubic_resize_table
      value = resize(value, expected[0])
      resized.append(key)
    if value.shape != expected:
      raise UserError(f'shape mismatch for {key!r}: expected {expected}, got '
                      f'{tuple(value.shape)}')
    flat[path] = np.array(_to_flax_layout(value, path), np.float32, order='C')
  variables = {'params': traverse_util.unflatten_dict(flat), 'batch_stats': {}}
  target = num_classes if num_classes is not None else (ckpt_classes or 1000)
  head_replaced = ckpt_classes != target
  if head_replaced:
    logging.info('fresh %d-class head (checkpoint head: %s)', target, ckpt_classes)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params = variables['params']
    fan_in = params['norm']['scale'].shape[0]
    params.setdefault(swin.HEAD, {'kernel': np.zeros((fan_in, 1), np.float32)})
    variables = swin.replace_head(variables, target, rng)
    variables['params'][swin.HEAD] = jax.tree_util.tree_map(
        np.asarray, variables['params'][swin.HEAD])
  if resized:
    logging.info('resized %d relative-position tables (%s)', len(resized),
                 'SimMIM geometric' if simmim else 'bicubic')
  info = {'simmim': bool(simmim), 'resized': resized, 'head_replaced': head_replaced,
          'image_size': model.image_size}
  return variables, info


def flax_to_torch(variables, image_size: Optional[int] = None) -> Dict[str, Any]:
  """{'params'(, 'batch_stats')} -> Microsoft-layout state dict of torch tensors, buffers
  (relative_position_index, attn_mask) included, so the reference loads it strictly."""
  import torch  # pylint: disable=g-import-not-at-top
  params = variables['params']
  _, spec = spec_of(params, image_size)
  sd = {}
  for key, path in name_map(params).items():
    leaf = _shape_at(params, path, value=True)
    sd[key] = torch.from_numpy(np.array(_to_torch_layout(leaf, path), np.float32))
  for i, depth in enumerate(spec.depths):
    res, window, shift = swin.stage_geometry(spec, i)
    index = torch.from_numpy(swin.relative_position_index(window).astype(np.int64))
    for j in range(depth):
      block = f'layers.{i}.blocks.{j}'
      sd[f'{block}.attn.relative_position_index'] = index.clone()
      if j % 2 and shift:
        sd[f'{block}.attn_mask'] = torch.from_numpy(
            swin.attention_mask(res, res, window, shift))
  return dict(sorted(sd.items(), key=lambda kv: _torch_order(kv[0])))


def _shape_at(tree, path, value=False):
  for p in path:
    tree = tree[p]
  return tree if value else tree.shape
