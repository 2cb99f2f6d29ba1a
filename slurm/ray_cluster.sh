#!/bin/bash
# A Ray cluster across the nodes of one SLURM job (the head on the first node, a worker on every other),
# then a curation stage run on it with --engine ray (docs/curation_scale.md):
#   sbatch --nodes=8 slurm/ray_cluster.sh viclip-curate split-scenes --list /shared/sources.txt \
#       --out /shared/clips --engine ray --workers 4
#   sbatch --nodes=2 --gpus-per-node=8 slurm/ray_cluster.sh viclip-curate caption-clips --input /shared/clips \
#       --out /shared/captioned --engine ray --gpus-per-worker 1 --coarse-path /models/blip2-opt-2.7b ...
# The command runs on the first node with RAY_ADDRESS set, so the stage joins this cluster. Without a
# command the cluster stays up until the job's time limit, for `ray job submit` from a login node (needs
# ray[default] on the cluster; the dashboard's job server listens on the head's port 8265):
#   sbatch --nodes=8 slurm/ray_cluster.sh            # its log names the head's address
#   ray job submit --address http://HEAD:8265 -- viclip-curate split-scenes ... --engine ray
# Every node must see the stage's output directory (a shared file system or an object store URL) and have
# viclip installed ('cluster' extra). A stage rerun (or a requeued job) skips done shards, so a lost node
# costs only its shards in flight, and a later run may use the local engine or a SLURM array instead.
#
# Environment variables:
#   PYTHON_BIN  the bin/ of the environment with viclip and ray installed (default: the one on PATH)
#   RAY_PORT    the head's port (default 6379)
#SBATCH --job-name=viclip_ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=1-00:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
[[ -n "${PYTHON_BIN:-}" ]] && export PATH="$PYTHON_BIN:$PATH"
: "${SLURM_JOB_NODELIST:?submit with sbatch}"

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
PORT=${RAY_PORT:-6379}
CPUS=${SLURM_CPUS_PER_TASK:-1}
export RAY_ADDRESS="$HEAD_IP:$PORT"
export OMP_NUM_THREADS=1  # one decode/encode process per core; library threads would only contend

# GPUs are found by Ray from the CUDA_VISIBLE_DEVICES each srun step gets.
srun --nodes=1 --ntasks=1 -w "$HEAD" ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
    --num-cpus="$CPUS" --dashboard-host=0.0.0.0 --block &
sleep 20
for node in "${NODES[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$RAY_ADDRESS" --num-cpus="$CPUS" --block &
done
sleep 20
echo "Ray cluster: head $RAY_ADDRESS (dashboard http://$HEAD_IP:8265), ${#NODES[@]} nodes"

if [[ $# -gt 0 ]]; then
  "$@"  # the job ends with the stage; the cluster's steps end with it
else
  wait
fi
