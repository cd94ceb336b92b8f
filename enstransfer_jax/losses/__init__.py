"""Losses: cross-entropy, the thesis's regularisers (RTD, RTD-Lite, MSE, WO, previous CE) and
the distillation of an ensemble into one student."""

from enstransfer_jax.losses.cross_entropy import cross_entropy
from enstransfer_jax.losses.cross_entropy import per_sample_cross_entropy
from enstransfer_jax.losses.distill import distillation_loss
from enstransfer_jax.losses.feature_mse import feature_mse
from enstransfer_jax.losses.orthogonal import flatten_params
from enstransfer_jax.losses.orthogonal import weight_orthogonality
from enstransfer_jax.losses.prev_ce import prev_ce
from enstransfer_jax.losses.rtd import pairwise_distances
from enstransfer_jax.losses.rtd import persistence_pairs
from enstransfer_jax.losses.rtd import rtd_loss
from enstransfer_jax.losses.rtd_lite import mst_mask
from enstransfer_jax.losses.rtd_lite import mst_weight
from enstransfer_jax.losses.rtd_lite import rtd_lite_loss
