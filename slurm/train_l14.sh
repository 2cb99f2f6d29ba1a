#!/bin/bash
# ViCLIP-L/14, the paper's recipe: 8 nodes x 8 GPUs x 512 clips, 10 masked epochs + 0.5 unmasked.
#   sbatch slurm/train_l14.sh                        (InternVid-10M-FLT)
#   EXPERIMENT=viclip_l14_internvid_200m sbatch slurm/train_l14.sh
# Extra arguments are Hydra overrides: sbatch slurm/train_l14.sh train.ckpt_every=500
#
# Paths (environment variables; the job stops at once, naming the one that is unset):
#   SHARDS      webdataset tars of the experiment's data, brace pattern: /data/ivid_flt/{00000..10647}.tar
#   CLIP_WEIGHTS OpenAI CLIP ViT-L/14 weights that initialise both towers
#   OUTPUT_ROOT where runs/<run_name>/ goes (checkpoints, exported weights, metrics.jsonl, config.yaml)
#   PYTHON      the interpreter of the environment with viclip installed (default: python)
#SBATCH --job-name=viclip_l14
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=3-00:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # submit from the repository root

MODEL=l14
source slurm/train_common.sh "$@"
