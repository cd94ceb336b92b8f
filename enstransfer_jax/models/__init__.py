"""Models: the torchvision-layout ResNet family (resnet.py) and Microsoft-layout Swin
(swin.py) in Flax, created by name through registry.py."""

from enstransfer_jax.models.batchnorm import BatchNorm
from enstransfer_jax.models.registry import (canonical_name, create_model, head_name,
                                             init_variables, is_swin, module_names,
                                             replace_head)
from enstransfer_jax.models.resnet import ARCHS, MODULE_NAMES, ResNet
from enstransfer_jax.models.swin import SwinTransformer

__all__ = ['ARCHS', 'MODULE_NAMES', 'BatchNorm', 'ResNet', 'SwinTransformer',
           'canonical_name', 'create_model', 'head_name', 'init_variables', 'is_swin',
           'module_names', 'replace_head']
