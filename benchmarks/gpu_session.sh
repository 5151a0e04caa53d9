#!/usr/bin/env bash
# Every GPU item of the open issues in one run on an H100/H200 (repo root; ~10 min):
#   issue 6  kernel correctness grid + speed          -> benchmarks/results/kernels-<device>.json
#   issue 7  exported UNet (onnxruntime, CPU) vs PyTorch on the GPU; TensorRT engines if installed
#   issue 8  CUDA-graph loop vs per-step loop vs eager; 60 frames, 25 steps, guided, SD-1.5 size
#            -> benchmarks/results/e2e-gpu-<device>.json
# Logs go to $OUT (the device tool's output folder) or benchmarks/results/.
set -uo pipefail
export PYTHONUNBUFFERED=1
logs=${OUT:-benchmarks/results}
mkdir -p "$logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/gpu-device.txt"
python -m pytest -m gpu tests -q -p no:cacheprovider 2>&1 | tee "$logs/gpu-tests.log"
python benchmarks/kernels.py 2>&1 | tee "$logs/gpu-kernels.log"
python benchmarks/e2e.py --gpu --repeats 3 2>&1 | tee "$logs/gpu-e2e.log"
cp benchmarks/results/kernels-*.json benchmarks/results/e2e-gpu-*.json "$logs"/ 2>/dev/null || true
