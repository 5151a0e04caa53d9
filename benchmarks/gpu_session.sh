#!/usr/bin/env bash
# Every GPU item of the open issues, on an H100/H200, from the repo root, in two device calls of < 10 min each:
#   benchmarks/gpu_session.sh checks   issue 6 kernel correctness grid (+ every other `gpu`-marked test: issue 7's
#                                      ONNX-on-CPU vs PyTorch-on-GPU, issue 8's CUDA-graph replay and Runtime --loop
#                                      graph) and the kernel timings  -> benchmarks/results/kernels-<device>.json
#   benchmarks/gpu_session.sh bench    issue 8: CUDA-graph loop vs per-step loop vs eager fp32 / fp16+SDPA at 60
#                                      frames, 25 steps, guided, SD-1.5 size, then the whole Runtime end to end
#                                      -> benchmarks/results/e2e-gpu-<device>.json
# Logs and result files are copied to $OUT (the device tool's output folder) when it is set.
# Before the session, HERE: benchmarks/gpu_wheels.sh (the wheels the GPU image lacks, into .whl/); each device call
# then names `.whl` in `carry`. This script installs them and builds the package (its C extension) for that Python.
set -uo pipefail
export PYTHONUNBUFFERED=1
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
part=${1:-all}
logs=${OUT:-benchmarks/results}
mkdir -p "$logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/gpu-device.txt"
if [[ $part == checks || $part == all ]]; then
    python3 -m pytest -m gpu tests --ignore=tests/kernels -q -p no:cacheprovider 2>&1 | tee "$logs/gpu-tests.log"
    python3 benchmarks/kernels.py 2>&1 | tee "$logs/gpu-kernels.log"  # runs the tests/kernels grid first
fi
if [[ $part == bench || $part == all ]]; then
    python3 benchmarks/e2e.py --gpu --repeats 3 2>&1 | tee "$logs/gpu-e2e.log"
fi
cp benchmarks/results/kernels-*.json benchmarks/results/kernels-*.png benchmarks/results/e2e-gpu-*.json "$logs"/ 2>/dev/null || true
