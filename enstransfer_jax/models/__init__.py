"""Models: the torchvision-layout ResNet family in Flax (see resnet.py)."""

from enstransfer_jax.models.batchnorm import BatchNorm
from enstransfer_jax.models.resnet import (ARCHS, MODULE_NAMES, ResNet,
                                           canonical_name, create_model,
                                           init_variables, replace_head)

__all__ = ['ARCHS', 'MODULE_NAMES', 'BatchNorm', 'ResNet', 'canonical_name',
           'create_model', 'init_variables', 'replace_head']
