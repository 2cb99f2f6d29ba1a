#!/usr/bin/env bash
# The GPU check on a lent GPU machine, with the device's own python and torch (make gpu-wheels prints the call).
#
# The wheels that machine lacks (VICLIP_WHEELS, default .whl/, from `make gpu-wheels`) are installed into a
# temporary folder, never into the image; bench/gpu_check.py runs with PYTHONPATH = the project root and that
# folder. Everything it prints goes to $OUT/gpu_check.log as well, and each section's rows to
# $OUT/gpu_check.jsonl as soon as the section ends, so a cut-off run still brings back what finished.
# Arguments go to bench/gpu_check.py (--cpu-smoke, --deadline S, --only ...).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu_check_out}
wheels=${VICLIP_WHEELS:-.whl}
python=${PYTHON:-python3}
mkdir -p "$out"
site=$(mktemp -d "${TMPDIR:-/tmp}/viclip_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
if compgen -G "$wheels/*.whl" >/dev/null; then
    if ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --upgrade --target "$site" "$wheels"/*.whl 2>&1 | tee "$out/gpu_check.log"; then
        echo "gpu_check.sh: installing the wheels of $wheels failed (see above)" | tee -a "$out/gpu_check.log"
        exit 1
    fi
else
    echo "gpu_check.sh: no wheels in $wheels (run make gpu-wheels here first); using what $python has" \
        | tee "$out/gpu_check.log"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
case " $* " in
    *" --cpu-smoke "*) export DS_ACCELERATOR=cpu ;;
    *) export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda} ;;
esac
"$python" bench/gpu_check.py --jsonl "$out/gpu_check.jsonl" "$@" 2>&1 | tee -a "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
