"""Data: datasets as uint8 host arrays, on-device JAX augmentation, batch order."""

from enstransfer_jax.data.augment import eval_transform
from enstransfer_jax.data.augment import train_transform
from enstransfer_jax.data.batches import batch_slices
from enstransfer_jax.data.batches import epoch_order
from enstransfer_jax.data.batches import padded_indices
from enstransfer_jax.data.batches import num_batches
from enstransfer_jax.data.datasets import DataNotFoundError
from enstransfer_jax.data.datasets import DataSplits
from enstransfer_jax.data.datasets import DATASETS
from enstransfer_jax.data.datasets import load_dataset
