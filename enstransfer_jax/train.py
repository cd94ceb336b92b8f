"""Short import path: `from enstransfer_jax import train; train.run(config, workdir)`."""

from enstransfer_jax.training.train import run  # noqa: F401
