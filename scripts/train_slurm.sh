#!/usr/bin/env bash
# Train one preset across SLURM nodes with torchrun (one process per GPU, NCCL).
#
#   sbatch scripts/train_slurm.sh kitti-aug-hg-mf runs/kitti data.roots=/data/KITTI data.masks=/data/kitti_masks/stores
#
# Resubmitting the same command continues the run from its newest checkpoint (exact resume), so a job
# killed at its time limit loses at most `logging.checkpoint_every` iterations. optim.batch_size is the
# global batch: it must divide by nodes x GPUs per node. Adjust the #SBATCH lines to your cluster.
#SBATCH --job-name=unsamflow-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
PRESET=${1:?usage: sbatch scripts/train_slurm.sh PRESET RUN_DIR [key=value ...]}
RUN=${2:?usage: sbatch scripts/train_slurm.sh PRESET RUN_DIR [key=value ...]}
shift 2
GPUS_PER_NODE=${GPUS_PER_NODE:-4}  # keep equal to --gpus-per-node above
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RESUME=()
[ -d "$RUN/checkpoints" ] && RESUME=(--resume)
# One torchrun per node (ntasks-per-node=1); torchrun starts one process per GPU and rendezvouses on the
# first node. The data loader's workers come out of --cpus-per-task (data.workers per process).
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" --rdzv-id "$SLURM_JOB_ID" \
    -m unsamflow.trainer train --preset "$PRESET" --out "$RUN" "${RESUME[@]}" "$@"
