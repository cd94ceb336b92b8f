"""Model names -> Flax modules: the ResNet family (resnet.py) and Swin (swin.py).

  model = create_model('ResNet50' | 'SwinTiny' | ..., num_classes, width=..., dtype=...)
  variables = init_variables(model, rng)            # {'params', 'batch_stats'}
  variables = replace_head(variables, num_classes, rng)

`width` is the ResNet base width (64 = torchvision) or the Swin embed dim (96 =
Swin-Tiny); None picks the architecture's own. `image_size` fixes a Swin's input size
(its window and relative-position tables depend on it) and is ignored by ResNets, which
take any size. Swin variables carry an empty 'batch_stats' dict, so code written for
ResNet's {'params', 'batch_stats'} works for both.
"""

from typing import Any, Optional, Tuple

import jax.numpy as jnp

from enstransfer_jax.models import resnet, swin


def canonical_name(name: str) -> str:
  """'resnet50', 'ImageNetResNet50', 'swin_tiny', 'SwinTiny' -> the registered name."""
  arch = swin.canonical_name(name)
  if arch is not None:
    return arch
  try:
    return resnet.canonical_name(name)
  except ValueError:
    valid = ', '.join(list(resnet.ARCHS) + ['ImageNet' + a for a in resnet.ARCHS]
                      + list(swin.ARCHS))
    raise ValueError(f'unknown model {name!r}; valid names: {valid}') from None


def is_swin(name: str) -> bool:
  return canonical_name(name) in swin.ARCHS


def create_model(name: str, num_classes: int, *, width: Optional[int] = None,
                 dtype: Any = jnp.float32, image_size: Optional[int] = None,
                 remat: bool = False):
  """ResNet18|34|50 (or ImageNetResNet18|34|50) or SwinTiny|SwinNano as a Flax module.
  remat: recompute each ResNet residual block in the backward pass (resnet.REMAT_POLICY)."""
  arch = canonical_name(name)
  if arch in swin.ARCHS:
    if remat:
      raise ValueError(f'remat=True is implemented for the ResNets only, not {arch}; '
                       'set remat=False')
    return swin.create_model(arch, num_classes, width=width, dtype=dtype,
                             image_size=image_size)
  return resnet.create_model(arch, num_classes, width=64 if width is None else width,
                             dtype=dtype, remat=remat)


def init_variables(model, rng, image_size: int = 32):
  """Fresh {'params', 'batch_stats'} ('batch_stats' empty for Swin, at its own size)."""
  if isinstance(model, swin.SwinTransformer):
    return swin.init_variables(model, rng)
  return resnet.init_variables(model, rng, image_size)


def head_name(variables) -> str:
  """'head' (Swin) or 'fc' (ResNet): the top-level params entry of the classifier."""
  return swin.HEAD if swin.HEAD in variables['params'] else 'fc'


def replace_head(variables, num_classes: int, rng):
  """A copy of `variables` with a fresh torch-nn.Linear-initialised classifier."""
  if swin.HEAD in variables.get('params', {}):
    return swin.replace_head(variables, num_classes, rng)
  return resnet.replace_head(variables, num_classes, rng)


def module_names(model) -> Tuple[str, ...]:
  """Top-level module names in forward order (freeze_layers, stop_gradient_after)."""
  if isinstance(model, swin.SwinTransformer):
    return model.module_names()
  return resnet.MODULE_NAMES
