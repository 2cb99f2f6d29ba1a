#!/bin/bash
# Fine-tuning on one node of 8 GPUs: 8 ranks x 32 clips = Table 9's batch of 256.
#   CHECKPOINT=ViClip-InternVid-10M-FLT.pth DATA_ROOT=/data/eval OUTPUT_ROOT=/runs sbatch slurm/finetune.sh
#   EXPERIMENT=ft_retrieval_didemo CHECKPOINT=... sbatch slurm/finetune.sh      (any experiment/ft_*.yaml)
# Extra arguments are Hydra overrides: sbatch slurm/finetune.sh finetune.train.split=7k optim.lr=1e-5
#
# Paths (environment variables; the job stops at once, naming the one that is unset):
#   CHECKPOINT  the ViCLIP weights to start from (an official .pth or one of our exports)
#   DATA_ROOT   the benchmark's annotations and videos, laid out as the eval tasks expect (VICLIP_DATA)
#   OUTPUT_ROOT where runs/<run_name>/ goes (checkpoints, weights/best.pth, last.pth, eval/, metrics.jsonl)
#   PYTHON      the interpreter of the environment with viclip installed (default: python)
#SBATCH --job-name=viclip_ft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=1-00:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # submit from the repository root

EXPERIMENT=${EXPERIMENT:-ft_retrieval_msrvtt}
: "${CHECKPOINT:?set CHECKPOINT to the ViCLIP weights to fine-tune}"
: "${DATA_ROOT:?set DATA_ROOT to the directory holding the benchmark (annotations/ and videos/)}"
: "${OUTPUT_ROOT:?set OUTPUT_ROOT to the directory that holds the runs}"
export VICLIP_DATA="$DATA_ROOT" VICLIP_OUTPUT="$OUTPUT_ROOT"

export DS_ACCELERATOR=cuda
export OMP_NUM_THREADS=8
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export WANDB_MODE=${WANDB_MODE:-offline}

# Preemption or time limit: requeue; the next start continues from the newest complete checkpoint
# (resume=auto), with the best-so-far epoch and its weights kept.
trap 'echo "requeue $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' USR1

srun --kill-on-bad-exit=1 "${PYTHON:-python}" train.py experiment="$EXPERIMENT" checkpoint="$CHECKPOINT" \
    resume=auto "$@" &
wait $!
