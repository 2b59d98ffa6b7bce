#!/usr/bin/env bash
# Train one preset across SLURM nodes with torchrun (one process per GPU, NCCL), surviving time limits
# and preemption.
#
#   sbatch scripts/train_slurm.sh kitti-aug-hg-mf runs/kitti data.roots=/data/KITTI data.masks=/data/kitti_masks/stores
#
# Five minutes before the time limit SLURM sends USR1 to this script (--signal=B:USR1@300); a
# preemption sends TERM. Either way the script passes TERM on to the training, which writes a checkpoint
# of the last finished step and exits with status 75; the script then requeues the job
# (`scontrol requeue`, allowed by --requeue), and the requeued job continues with --resume, so nothing
# since the last periodic checkpoint is lost. A run that finishes (or fails for another reason) is not
# requeued. optim.batch_size is the global batch: it must divide by nodes x GPUs per node. Adjust the
# #SBATCH lines to your cluster.
#SBATCH --job-name=unsamflow-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail
PRESET=${1:?usage: sbatch scripts/train_slurm.sh PRESET RUN_DIR [key=value ...]}
RUN=${2:?usage: sbatch scripts/train_slurm.sh PRESET RUN_DIR [key=value ...]}
shift 2
GPUS_PER_NODE=${GPUS_PER_NODE:-4}  # keep equal to --gpus-per-node above
RDZV_PORT=${RDZV_PORT:-29500}
PREEMPTED=75                       # the trainer's exit status after a checkpoint on SIGTERM / SIGUSR1
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
ARGS=(--preset "$PRESET" "$@")
# A run that has a checkpoint continues from it: its config is the checkpoint's; the same key=value
# arguments are accepted, and a larger optim.iterations=N extends the run.
ls "$RUN"/checkpoints/ckpt_*.pt >/dev/null 2>&1 && ARGS=(--resume "$@")

STOPPING=0
stop() { STOPPING=1; [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null; }
trap stop USR1 TERM

# One torchrun per node (ntasks-per-node=1); torchrun starts one process per GPU and rendezvouses on the
# first node, and passes TERM on to them. The data loader's workers come out of --cpus-per-task.
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:$RDZV_PORT" --rdzv-id "$SLURM_JOB_ID" \
    -m unsamflow.trainer train --out "$RUN" "${ARGS[@]}" &
PID=$!
STATUS=0
wait "$PID" || STATUS=$?
while kill -0 "$PID" 2>/dev/null; do  # a trapped signal interrupts `wait`: wait for the checkpoint
    STATUS=0
    wait "$PID" || STATUS=$?
done
if [ "$STATUS" -eq "$PREEMPTED" ] || { [ "$STOPPING" -eq 1 ] && [ "$STATUS" -ne 0 ]; }; then
    echo "train_slurm: stopped with a checkpoint (status $STATUS); requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$STATUS"
