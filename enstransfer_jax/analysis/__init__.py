"""Analysis of finished runs: similarities, weights, soup, basin, plots, reports.

The command is enstransfer_jax/analyze.py (python -m enstransfer_jax.analyze WORK_DIR ...).
"""

from enstransfer_jax.analysis.basin import line, plane, plane_basis, plane_coefficients
from enstransfer_jax.analysis.pipeline import Options, analyze_run, load_run
from enstransfer_jax.analysis.compare import comparison, write_comparison
from enstransfer_jax.analysis.rtd_metric import rtd_score
from enstransfer_jax.analysis.similarity import (centered_gram, cka_from_grams, feature_mse,
                                                 linear_cka, rtd)
from enstransfer_jax.analysis.soup import soup_probs, uniform_soup
from enstransfer_jax.analysis.weights import stage_distances, update_cosines
