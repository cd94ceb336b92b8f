"""enstransfer-jax: ensembles fine-tuned from one pre-trained checkpoint, in JAX/Flax."""

__version__ = '0.1.0'


def create_model(*args, **kwargs):
  from enstransfer_jax.models import create_model as _create  # pylint: disable=g-import-not-at-top
  return _create(*args, **kwargs)


def load_pretrained(*args, **kwargs):
  from enstransfer_jax.checkpoints import load_pretrained as _load  # pylint: disable=g-import-not-at-top
  return _load(*args, **kwargs)


def __getattr__(name):
  """Ensemble and Prediction (enstransfer_jax/ensemble.py), imported on first use."""
  if name in ('Ensemble', 'Prediction'):
    from enstransfer_jax import ensemble  # pylint: disable=g-import-not-at-top
    return getattr(ensemble, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
