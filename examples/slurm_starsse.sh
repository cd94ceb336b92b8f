#!/usr/bin/env bash
# StarSSE on 2 nodes x 4 GPUs with SLURM: one process per node, each driving its 4 GPUs.
# jax.distributed.initialize() reads SLURM's variables (main.py calls it when SLURM_NTASKS > 1);
# every process reads its own rows of each batch, and only process 0 writes the work dir.
#SBATCH --job-name=starsse
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
set -euo pipefail
srun python main.py --config configs/starsse.py \
  --config.seed="${SEED:-1}" \
  --config.ckpt=checkpoints/byol-1 \
  --config.data_dir=/data/tfds \
  --config.mesh_members=4 \
  --workdir "experiments/cifar100/BYOL_StarSSE/seed=${SEED:-1}"
# mesh_members=4: the 4 parallel members 2..5 are spread over 4 devices, each member's batch over
# the other 2; the work dir must be on a file system shared by the nodes.
