#!/bin/bash
# Evaluate a checkpoint on one node: videos are split over the GPUs (one rank each) and gathered.
#   CHECKPOINT=/ckpt/ViClip-InternVid-10M-FLT.pth sbatch slurm/eval.sh task=zeroshot_k400
#   CHECKPOINT=runs/viclip_l14_internvid_10m_flt sbatch slurm/eval.sh -m task=zeroshot_k400,zeroshot_k600,zeroshot_k700
# Arguments are passed to eval.py (Hydra overrides; -m for a sweep with one combined table).
#
# Paths (environment variables; the job stops at once, naming the one that is unset):
#   CHECKPOINT   an official .pth, a .safetensors file or a training run directory
#   VICLIP_DATA  root of the benchmark annotations and videos (see viclip/configs/task/*.yaml)
#   VICLIP_OUTPUT where runs/eval/<job id>/ goes (results JSON and tables; default: runs)
#   PYTHON       the interpreter of the environment with viclip installed (default: python)
#SBATCH --job-name=viclip_eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --mem=0
#SBATCH --time=06:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # submit from the repository root

: "${CHECKPOINT:?set CHECKPOINT to an official .pth, a .safetensors file or a run directory}"
: "${VICLIP_DATA:?set VICLIP_DATA to the root of the evaluation data sets}"
export VICLIP_DATA VICLIP_OUTPUT=${VICLIP_OUTPUT:-runs}
export OMP_NUM_THREADS=8

GPUS=${SLURM_GPUS_ON_NODE:-8}
# torchrun sets TORCHELASTIC_RUN_ID, so every rank of a launch writes into the same eval directory.
"${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
    eval.py checkpoint="$CHECKPOINT" precision=bf16 num_workers=10 "$@"
