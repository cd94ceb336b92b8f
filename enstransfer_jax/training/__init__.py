"""Training: the plan of members, where they start, the jitted step, one stage's loop,
progress checkpoints and the work dir's outputs. `run_experiment(config, workdir)` runs it all."""

from enstransfer_jax.training.experiment import run_experiment  # noqa: F401
