#!/usr/bin/env bash
# GPU check of the scoring models on the device machine (see benchmarks/gpu_check.py):
#
#   benchmarks/gpu_check.sh prepare [--small] [--no-wheel] ...   here: wheel parts, models,
#                                                                SHA256SUMS, the device calls
#   benchmarks/gpu_check.sh receive N                            device: part N arrived intact?
#   benchmarks/gpu_check.sh run [--cpu-only] [--threads N] ...   device: join + check the
#        wheel, install it first on sys.path, find the CUDA 13 libraries, then placement,
#        parity and crossover per variant; JSON to $OUT/gpu_check.json
#   benchmarks/gpu_check.sh kernels --stub-cuda                  here: regenerate
#                                                                streams/scoring/cuda_kernels.py
#
# Files live in .gpu_check/ (git-ignored; STREAMSCORE_GPU_CHECK_DIR overrides it). Python:
# .venv/bin/python for prepare and kernels, python3 (the device's) otherwise; PYTHON
# overrides both.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${STREAMSCORE_GPU_CHECK_DIR:-.gpu_check}
work=${STREAMSCORE_GPU_CHECK_WORK:-/tmp/streamscore-gpu-check}
step=${1:-}
[ $# -gt 0 ] && shift

case "$step" in
prepare | kernels)
    exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py --dir "$dir" "$step" "$@"
    ;;
receive)
    exec "${PYTHON:-python3}" benchmarks/gpu_check.py --dir "$dir" receive "$@"
    ;;
run)
    py=${PYTHON:-python3}
    cpu_only=0
    for arg in "$@"; do [ "$arg" = --cpu-only ] && cpu_only=1; done
    if [ "$cpu_only" = 0 ]; then
        # The carried onnxruntime-gpu goes first on sys.path, shadowing the CPU build there.
        rm -rf "$work"
        "$py" benchmarks/gpu_check.py --dir "$dir" assemble --to "$work/wheels"
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$work/site" "$work"/wheels/*.whl
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
        # cuDNN opens its engine libraries by name: their folders go on the loader's path.
        libs=$("$py" benchmarks/gpu_check.py libdirs)
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    PYTHONUNBUFFERED=1 exec "$py" benchmarks/gpu_check.py --dir "$dir" run "$@"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
