#!/bin/bash
# The launch shared by slurm/train_l14.sh and slurm/train_b16.sh, sourced from the batch shell after
# they set MODEL (l14 or b16; the requeue trap must live in that shell). Checks the path variables,
# hands them to the configs, and starts one process per GPU with srun: train.py reads
# SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and derives MASTER_ADDR (first node, via scontrol) and
# MASTER_PORT (from the job id) itself (viclip/distributed.py::launcher_env), the one place they are computed.
EXPERIMENT=${EXPERIMENT:-viclip_${MODEL}_internvid_10m_flt}
: "${SHARDS:?set SHARDS to the brace pattern of the training tars}"
: "${CLIP_WEIGHTS:?set CLIP_WEIGHTS to the OpenAI CLIP weights of the model (ViT-L/14 or ViT-B/16)}"
: "${OUTPUT_ROOT:?set OUTPUT_ROOT to the directory that holds the runs}"
DATA=${EXPERIMENT#viclip_${MODEL}_}
# The configs read these variables (viclip/configs/model/vit_<model>.yaml, viclip/configs/data/<data>.yaml); a
# variable keeps the brace pattern away from Hydra's override parser.
export "VICLIP_SHARDS_${DATA^^}=$SHARDS" "VICLIP_CLIP_${MODEL^^}=$CLIP_WEIGHTS" VICLIP_OUTPUT="$OUTPUT_ROOT"

export DS_ACCELERATOR=cuda
export OMP_NUM_THREADS=8
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker}
export WANDB_MODE=${WANDB_MODE:-offline}

# Preemption or time limit: SLURM signals the batch shell 180 s ahead; requeue, and the next start
# continues from the newest complete checkpoint (resume=auto; a kill mid-save is safe).
trap 'echo "requeue $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' USR1

srun --kill-on-bad-exit=1 "${PYTHON:-python}" train.py experiment="$EXPERIMENT" resume=auto "$@" &
wait $!
