#!/bin/bash
# Curation as a SLURM job array: array task i of N runs the source shards s with s % N == i.
#   SOURCES=/data/raw_videos.txt OUT=/data/clips sbatch --array=0-999 slurm/curate_array.sh
#   SOURCES=/data/raw_videos/ OUT=/data/clips sbatch --array=0-99 slurm/curate_array.sh --videos-per-shard 200
#   MODE=fetch ANNOTATIONS=/data/InternVid-10M-FLT.jsonl TEMPLATE='/data/yt/{id}.mp4' OUT=/data/ivid_flt \
#       sbatch --array=0-499 slurm/curate_array.sh
# Extra arguments go to the tool (tools/split_scenes.py or tools/fetch_clips.py). The default clips are
# training storage (256 px, 4 fps, all keyframes); for clips to watch or generate from, e.g.
#   --short-side 720 --fps 0 --keyframe-interval 1 --tune ''
# Every task must get the same SOURCES/ANNOTATIONS and options: the output directory records them and
# refuses a mismatch. Rerunning or requeueing is safe: finished shards are skipped, unfinished ones
# redone, so resubmitting the same array after a failure or preemption completes the stage. The
# last task to finish writes OUT/sizes.json.
# A video that hangs past its time budget (--budget-base, default 120 s, plus --budget-factor, default 4,
# times its duration) or crashes its worker becomes a failed row ('timeout' / 'crashed'); the budget is
# not recorded, so a rerun may change it. Resubmitting with --retry-failed redoes the failed videos of
# finished shards (after fixing the cause) and rewrites those shards without duplicating a clip.
# Each array task runs its slice of the shards with the local engine; slurm/ray_cluster.sh runs the same
# shards on a Ray cluster instead (--engine ray), and either may finish what the other started.
#
# Environment variables:
#   OUT          stage output directory (tars, parquet tables, stats files)          [required]
#   MODE         split (scene cuts, default) or fetch (rebuild released clips from a JSONL)
#   SOURCES      split: a folder of videos or a text file of 'URI' / 'ID<TAB>URI' lines
#   ANNOTATIONS  fetch: InternVid JSONL; ID_MAP (id -> path/URL file) and/or TEMPLATE ('/videos/{id}.mp4')
#   PYTHON       the interpreter of the environment with viclip installed (default: python)
#SBATCH --job-name=viclip_curate
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=1-00:00:00
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # submit from the repository root

: "${OUT:?set OUT to the stage output directory}"
: "${SLURM_ARRAY_TASK_ID:?submit as an array: sbatch --array=0-N ...}"
TASK=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
NUM_TASKS=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT is not set}
WORKERS=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=1  # one decode/encode process per core; library threads would only contend

RUN=(--out "$OUT" --task "$TASK" --num-tasks "$NUM_TASKS" --workers "$WORKERS" --no-progress)
case "${MODE:-split}" in
  split)
    : "${SOURCES:?set SOURCES to a folder of videos or a file list}"
    if [[ -d "$SOURCES" ]]; then INPUT=(--videos "$SOURCES"); else INPUT=(--list "$SOURCES"); fi
    exec "${PYTHON:-python}" tools/split_scenes.py "${INPUT[@]}" "${RUN[@]}" "$@"
    ;;
  fetch)
    : "${ANNOTATIONS:?set ANNOTATIONS to the InternVid JSONL}"
    MAP=()
    [[ -n "${ID_MAP:-}" ]] && MAP+=(--id-map "$ID_MAP")
    [[ -n "${TEMPLATE:-}" ]] && MAP+=(--template "$TEMPLATE")
    exec "${PYTHON:-python}" tools/fetch_clips.py --annotations "$ANNOTATIONS" "${MAP[@]}" "${RUN[@]}" "$@"
    ;;
  *)
    echo "MODE must be split or fetch, got '$MODE'" >&2
    exit 2
    ;;
esac
