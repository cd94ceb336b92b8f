"""Exact PyTorch <-> Flax conversion of torchvision ResNet checkpoints, and their storage.

Flax module paths equal torch's dotted module names (layer1/0/downsample/0 is
'layer1.0.downsample.0'), so the whole name map is this table of leaf names:

  flax collection / leaf        torch suffix      layout
  params      / kernel (4-D)    .weight           conv  HWIO  <-> OIHW
  params      / kernel (2-D)    .weight           fc    (in, out) <-> (out, in)
  params      / scale           .weight           BN
  params      / bias            .bias             BN, fc
  batch_stats / mean            .running_mean     BN
  batch_stats / var             .running_var      BN
  (none)                        .num_batches_tracked  ignored; written as 0

A converted checkpoint is a directory: `variables/` (orbax PyTree checkpoint of
{'params', 'batch_stats'}) and `metadata.json` (architecture, num_classes, width,
num_params, source file name and sha256). It is written into OUT.tmp-xxxx and
renamed, so a failure leaves nothing half-written. Torch is imported only inside
the functions that read or write torch files.

Swin checkpoints (Microsoft layout, supervised or SimMIM) take the same paths: the
functions below hand them to enstransfer_jax/swin_checkpoints.py (its own name map;
'batch_stats' is an empty dict, metadata adds image_size and window_size).
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from enstransfer_jax import atomic
from enstransfer_jax import models
from enstransfer_jax import swin_checkpoints
from enstransfer_jax.models import resnet
from enstransfer_jax.errors import UserError

_LEAVES = {  # (collection, flax leaf) -> torch suffix
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
# Forward order of module and leaf names: sorting by it gives torchvision's key order.
_ORDER = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample', 'layer1',
          'layer2', 'layer3', 'layer4', 'fc', 'kernel', 'scale', 'bias', 'mean', 'var')
_WRAPPERS = ('model_state', 'state_dict', 'model')  # where checkpoints keep the state dict
_HOW_TO = 'convert a PyTorch one with: python convert_byol.py IN.pt OUT_DIR'


def _to_torch_layout(a):
  a = np.asarray(a)
  return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _to_flax_layout(a):
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _torch_order(path):
  """Sort key giving torchvision's state-dict order (forward order of modules)."""
  return tuple(int(p) if p.isdigit() else _ORDER.index(p) if p in _ORDER else 99
               for p in path)


def name_map(variables) -> Dict[str, Tuple[str, Tuple[str, ...]]]:
  """torch key -> (collection, flax path) for every leaf, in torchvision's key order."""
  leaves = [(col, path) for col in ('params', 'batch_stats')
            for path in traverse_util.flatten_dict(dict(variables[col]))]
  leaves.sort(key=lambda cp: _torch_order(cp[1]))
  return {'.'.join(path[:-1] + (_LEAVES[(col, path[-1])],)): (col, path)
          for col, path in leaves}


def infer_arch(keys) -> str:
  """'ResNet18' | 'ResNet34' | 'ResNet50' from torch-style keys (blocks per stage)."""
  keys = list(keys)
  stages = []
  for i in range(1, 5):
    idx = [int(k.split('.')[1]) for k in keys
           if k.startswith(f'layer{i}.') and k.split('.')[1].isdigit()]
    stages.append(max(idx) + 1 if idx else 0)
  bottleneck = any(k.startswith('layer1.0.conv3.') for k in keys)
  for arch, (block, sizes) in resnet.ARCHS.items():
    if tuple(stages) == sizes and (block == 'bottleneck') == bottleneck:
      return arch
  raise UserError(f'not a ResNet-18/34/50 state dict: blocks per stage {stages}, '
                  f'bottleneck={bottleneck}, first keys {keys[:3]}')


def _is_swin(variables) -> bool:
  return 'patch_embed' in variables.get('params', {})


def describe(variables) -> Dict[str, Any]:
  """architecture, num_classes, width and num_params of ResNet (or Swin) variables."""
  if _is_swin(variables):
    return swin_checkpoints.describe(variables)
  params = variables['params']
  return {
      'architecture': infer_arch('.'.join(p) for p in
                                 traverse_util.flatten_dict(dict(params))),
      'num_classes': int(params['fc']['bias'].shape[0]),
      'width': int(params['conv1']['kernel'].shape[-1]),
      'num_params': int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
  }


def _numpy(v):
  if hasattr(v, 'detach'):  # torch tensor; bf16/fp16 go through float32
    v = v.detach().cpu()
    v = v.float() if v.is_floating_point() else v
    return v.numpy()
  return np.asarray(v)


def torch_to_flax(state_dict: Mapping[str, Any], arch: str,
                  num_classes: Optional[int] = None, *, rng=None) -> Dict[str, Any]:
  """A torchvision ResNet state dict -> {'params', 'batch_stats'} of float32 numpy.

  `state_dict` may also be a whole checkpoint (see unwrap_state_dict). Width is
  read from conv1. If `num_classes` is given and differs from the checkpoint's
  head, the head is replaced by a fresh torch-Linear-initialised one (from `rng`,
  default PRNGKey(0)), as the reference does when fine-tuning on a new dataset.
  """
  sd = {k: _numpy(v) for k, v in unwrap_state_dict(state_dict).items()}
  arch = resnet.canonical_name(arch)
  width = sd['conv1.weight'].shape[0] if 'conv1.weight' in sd else 64
  ckpt_classes = sd['fc.bias'].shape[0] if 'fc.bias' in sd else 1000
  model = resnet.create_model(arch, int(ckpt_classes), width=int(width))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3))))
  table = name_map(shapes)
  given = [k for k in sd if not k.endswith('num_batches_tracked')]
  missing = [k for k in table if k not in sd]
  unexpected = [k for k in given if k not in table]
  if missing or unexpected:
    raise UserError(f'state dict is not a torchvision {arch} (width {width}): '
                    f'missing {_first(missing)}, unexpected {_first(unexpected)}')
  flat = {'params': {}, 'batch_stats': {}}
  for key, (col, path) in table.items():
    value = sd[key]
    expected = _to_torch_layout(np.empty(_shape_at(shapes[col], path), np.uint8)).shape
    if value.shape != expected:
      raise UserError(f'shape mismatch for {key!r}: expected {expected}, got '
                      f'{tuple(value.shape)}')
    flat[col][path] = np.array(_to_flax_layout(value), np.float32, order='C')  # a copy
  variables = {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}
  if num_classes is not None and num_classes != ckpt_classes:
    logging.info('replacing the %d-class head by a fresh %d-class one',
                 ckpt_classes, num_classes)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    variables = resnet.replace_head(variables, num_classes, rng)
    variables['params']['fc'] = jax.tree_util.tree_map(
        np.asarray, variables['params']['fc'])
  return variables


def flax_to_torch(variables) -> Dict[str, Any]:
  """{'params', 'batch_stats'} -> torchvision-layout state dict of torch tensors."""
  import torch  # pylint: disable=g-import-not-at-top
  if _is_swin(variables):
    return swin_checkpoints.flax_to_torch(variables)
  for col in ('params', 'batch_stats'):
    if col not in variables:
      raise UserError(f'variables lack {col!r}; expected {{"params", "batch_stats"}}')
  table = name_map(variables)
  sd = {}
  for key, (col, path) in table.items():
    leaf = _shape_at(variables[col], path, value=True)
    sd[key] = torch.from_numpy(np.array(_to_torch_layout(leaf), np.float32))
    if key.endswith('.running_var'):
      sd[key[:-len('running_var')] + 'num_batches_tracked'] = torch.tensor(0)
  return sd


def _shape_at(tree, path, value=False):
  for p in path:
    tree = tree[p]
  return tree if value else tree.shape


def _first(keys):
  if not keys:
    return 'none'
  return repr(keys[0]) + (f' (+{len(keys) - 1} more)' if len(keys) > 1 else '')


def unwrap_state_dict(obj, source: str = 'checkpoint') -> Dict[str, Any]:
  """The state dict inside a checkpoint: under model_state | state_dict | model, or bare.

  A leading 'module.' (DataParallel) is stripped from every key.
  """
  if not isinstance(obj, Mapping):
    raise UserError(f'{source} holds a {type(obj).__name__}, not a dict with a state dict')
  for key in _WRAPPERS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in obj.items()}
  if not sd or not all(hasattr(v, 'shape') for v in sd.values()):
    raise UserError(f'{source} holds no state dict (top-level keys '
                    f'{list(sd)[:5]}); expected tensors, possibly under one of '
                    f'{", ".join(_WRAPPERS)}')
  return sd


def read_torch_checkpoint(path, *, trust_pickle: bool = False) -> Dict[str, Any]:
  """The state dict of a torch .pt/.pth file (tensors; see unwrap_state_dict)."""
  import torch  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no PyTorch checkpoint file at {path}')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=not trust_pickle)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e)
    if 'Unsupported global' in msg:
      what = msg[msg.index('Unsupported global'):].split('\n')[0].strip()
      raise UserError(f'{path} holds Python objects besides tensors ({what}); if you '
                      'trust the file, pass --trust-pickle (trust_pickle=True)') from None
    raise UserError(f'{path} is not a readable PyTorch checkpoint '
                    f'({type(e).__name__}: {msg.splitlines()[0] if msg else ""})') from None
  return unwrap_state_dict(obj, source=str(path))


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def check_absent(out, force):
  if out.exists() and not force:
    raise FileExistsError(f'{out} already exists; pass --force (force=True) to replace it')


def save_converted(out_dir, variables, metadata: Optional[Mapping[str, Any]] = None,
                   *, force: bool = False) -> Dict[str, Any]:
  """Writes variables (orbax) and metadata.json to out_dir atomically; returns the metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out = Path(out_dir).absolute()
  check_absent(out, force)
  is_swin = _is_swin(variables)
  tree = {c: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32),
                                    traverse_util.unflatten_dict(traverse_util.flatten_dict(
                                        dict(variables.get(c, {}) if is_swin else variables[c]))))
          for c in ('params', 'batch_stats')}
  if is_swin:
    meta = {'format': swin_checkpoints.FORMAT, **swin_checkpoints.describe(
        tree, dict(metadata or {}).get('image_size'))}
  else:
    meta = {'format': 'enstransfer_jax.resnet/1', **describe(tree)}
  for k, v in dict(metadata or {}).items():
    if k == 'architecture' and models.canonical_name(v) != meta[k]:
      raise UserError(f'metadata says {v} but the variables are a {meta[k]}')
    meta.setdefault(k, v)
  out.parent.mkdir(parents=True, exist_ok=True)

  def write(tmp):
    tmp.mkdir()
    _checkpointer().save(tmp / 'variables', tree)
    (tmp / 'metadata.json').write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
  atomic.write(out, write)
  return meta


def read_metadata(ckpt_dir) -> Dict[str, Any]:
  path = Path(ckpt_dir) / 'metadata.json'
  if not path.is_file():
    raise UserError(f'{ckpt_dir} is not a converted checkpoint (no metadata.json); '
                    f'{_HOW_TO}')
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise UserError(f'{path} is not valid JSON ({e}); reconvert the checkpoint') from None


def _checkpointer():
  """Host (numpy) trees are written and read by each process on its own: with several JAX
  processes, orbax would otherwise wait at a barrier for processes that never save members."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return ocp.PyTreeCheckpointer()
  me = jax.process_index()
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(), multiprocessing_options=(
      ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})))


def load_pretrained(path, arch: Optional[str] = None, *,
                    trust_pickle: bool = False) -> Tuple[str, Dict[str, Any]]:
  """(architecture, {'params', 'batch_stats'}) from a converted dir or a torch .pt file.

  For a .pt file the architecture is inferred from its keys unless `arch` is given.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f'no pre-trained checkpoint at {p}; {_HOW_TO}')
  if not p.is_dir():
    sd = read_torch_checkpoint(p, trust_pickle=trust_pickle)
    if _swin_input(sd, arch):
      name = models.canonical_name(arch) if arch else swin_checkpoints.infer_arch(sd)
      return name, swin_checkpoints.torch_to_flax(sd, name, numpy_fn=_numpy)[0]
    name = resnet.canonical_name(arch) if arch else infer_arch(sd)
    return name, torch_to_flax(sd, name)
  meta = read_metadata(p)
  name = models.canonical_name(meta.get('architecture', '?'))
  if arch and models.canonical_name(arch) != name:
    raise UserError(f'{p} holds a {name}, not the requested {arch}')
  try:
    tree = _checkpointer().restore((p / 'variables').absolute())
    if models.is_swin(name):  # Swin has no batch statistics (an empty dict)
      return name, {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
    return name, {'params': tree['params'], 'batch_stats': tree['batch_stats']}
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [''])[0][:160]
    raise UserError(f'{p} is corrupt or half-written ({type(e).__name__}: {reason}); convert '
                    'or train it again') from None


def _swin_input(sd, arch) -> bool:
  """Whether a torch state dict goes the Swin way: --arch names a Swin, or no --arch and
  Swin keys."""
  return models.is_swin(arch) if arch else swin_checkpoints.looks_like_swin(sd)


def convert_file(in_path, out_dir, *, arch: Optional[str] = None,
                 num_classes: Optional[int] = None, seed: int = 0,
                 force: bool = False, trust_pickle: bool = False,
                 image_size: Optional[int] = None,
                 simmim: Optional[bool] = None) -> Dict[str, Any]:
  """torch .pt -> converted directory (what convert_byol.py runs); returns the metadata.

  image_size and simmim apply to Swin only: the target input size (default the
  architecture's; relative-position tables are resized to its windows) and whether the
  checkpoint is SimMIM's (default: whether its keys carry 'encoder.').
  """
  check_absent(Path(out_dir).absolute(), force)
  sd = read_torch_checkpoint(in_path, trust_pickle=trust_pickle)
  if _swin_input(sd, arch):
    name = models.canonical_name(arch) if arch else swin_checkpoints.infer_arch(sd)
    variables, info = swin_checkpoints.torch_to_flax(
        sd, name, num_classes, rng=jax.random.PRNGKey(seed), image_size=image_size,
        simmim=simmim, numpy_fn=_numpy)
    meta = {'source': Path(in_path).name, 'source_sha256': sha256(in_path),
            'head_replaced': info['head_replaced'], 'image_size': info['image_size'],
            'simmim': info['simmim'], 'tables_resized': len(info['resized'])}
    if meta['head_replaced']:
      meta['head_seed'] = seed
    return save_converted(out_dir, variables, meta, force=force)
  if image_size is not None or simmim:
    raise UserError('--image-size and --simmim apply to Swin checkpoints only; drop them '
                    'for a ResNet')
  name = resnet.canonical_name(arch) if arch else infer_arch(sd)
  variables = torch_to_flax(sd, name, num_classes, rng=jax.random.PRNGKey(seed))
  src_classes = _numpy(sd['fc.bias']).shape[0]
  meta = {'source': Path(in_path).name, 'source_sha256': sha256(in_path),
          'head_replaced': bool(num_classes is not None and num_classes != src_classes)}
  if meta['head_replaced']:
    meta['head_seed'] = seed
  return save_converted(out_dir, variables, meta, force=force)


def export_torch(ckpt, out_file, *, force: bool = False) -> Dict[str, Any]:
  """Converted dir (or .pt) -> torch file {'model_state': state dict}, the reference's format."""
  import torch  # pylint: disable=g-import-not-at-top
  out = Path(out_file).absolute()
  check_absent(out, force)
  _, variables = load_pretrained(ckpt)
  if _is_swin(variables):  # its attention masks depend on the image size it was made for
    size = read_metadata(ckpt).get('image_size') if Path(ckpt).is_dir() else None
    sd = swin_checkpoints.flax_to_torch(variables, size)
  else:
    sd = flax_to_torch(variables)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic.write(out, lambda tmp: torch.save({'model_state': sd}, tmp))
  info = (swin_checkpoints.describe(variables, size) if _is_swin(variables)
          else describe(variables))
  return {**info, 'sha256': sha256(out)}
