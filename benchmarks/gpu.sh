#!/usr/bin/env bash
# GPU checks and benchmarks on a CUDA machine (the package installed there: pip install -e ".[test,gpu]").
#
#   benchmarks/gpu.sh checks   the `gpu`-marked tests, then the kernel correctness grid and timings
#                              (benchmarks/triton_kernels.py)                       -> kernels-<device>.json, .png
#   benchmarks/gpu.sh bench    the real-time benchmark: CUDA-graph loop vs per-step loop vs eager fp32 and
#                              fp16+SDPA at 60 frames, 25 steps, guided, SD-1.5 size, then the Runtime end to end
#                              (benchmarks/e2e.py --gpu)                     -> e2e-gpu-<device>.json
#   benchmarks/gpu.sh all      both
#   benchmarks/gpu.sh wheels   on a machine with internet access: download the wheels a CUDA image with torch,
#                              triton, TensorRT and onnxruntime usually lacks (versions from constraints.txt)
#
# Options:
#   --results DIR   logs and result files (default: $MINDVIDEO_RESULTS, else benchmarks/results)
#   --wheels DIR    wheels: where to download them (default .whl); checks/bench/all: install the wheels in DIR first
#                   (offline, into a temporary folder put on PYTHONPATH) and reinstall the package, which builds
#                   its C sampling loop for this Python
#   --python X.Y    wheels: the GPU machine's Python version (default: this python3's)
#   --dry-run       print the commands instead of running them; nothing is written
# Exit status: 0 when every step passed, 1 when one failed (the later steps still run), 2 for a usage error.
set -uo pipefail

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }

part="" results=${MINDVIDEO_RESULTS:-} wheels="" python_version="" dry_run=0
while (($#)); do
    case $1 in
        checks | bench | all | wheels) part=$1 ;;
        --results) results=${2:?--results needs a folder}; shift ;;
        --wheels) wheels=${2:?--wheels needs a folder}; shift ;;
        --python) python_version=${2:?--python needs a version}; shift ;;
        --dry-run) dry_run=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $part ]]; then
    echo "error: expected checks, bench, all or wheels" >&2; usage >&2; exit 2
fi
# paths given relative to the caller's folder; the steps run from the repo root
results=$(realpath -m "${results:-$(dirname "$0")/results}")
[[ -n $wheels ]] && wheels=$(realpath -m "$wheels")
cd "$(dirname "$0")/.." || exit 2

failed=0
run() {  # run LOG CMD...: the command, its output also written to LOG (no LOG: "-")
    local log=$1
    shift
    if ((dry_run)); then
        printf '%q ' "$@"
        [[ $log != - ]] && printf '> %q' "$log"
        echo
        return 0
    fi
    if [[ $log == - ]]; then
        "$@" || failed=1
    else
        "$@" 2>&1 | tee "$log"
        ((PIPESTATUS[0] == 0)) || failed=1
    fi
}

if [[ $part == wheels ]]; then
    wheels=${wheels:-$PWD/.whl}
    python_version=${python_version:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
    ((dry_run)) || mkdir -p "$wheels"
    run - python3 -m pip download -q --no-deps --only-binary=:all: -c constraints.txt \
        --python-version "$python_version" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$wheels" \
        diffusers nibabel importlib_metadata importlib_resources polygraphy onnx_graphsurgeon
    exit $failed
fi

export PYTHONUNBUFFERED=1
((dry_run)) || mkdir -p "$results"
if [[ -n $wheels ]]; then
    site=${TMPDIR:-/tmp}/mindvideo-gpu-site
    run - python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    run - python3 -m pip install -q --no-deps --no-build-isolation -e .
fi
run "$results/gpu-device.txt" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [[ $part == checks || $part == all ]]; then
    run "$results/gpu-tests.log" python3 -m pytest -m gpu tests --ignore=tests/kernels -q -p no:cacheprovider
    run "$results/gpu-kernels.log" python3 benchmarks/triton_kernels.py --out-dir "$results"  # the tests/kernels grid first
fi
if [[ $part == bench || $part == all ]]; then
    run "$results/gpu-e2e.log" python3 benchmarks/e2e.py --gpu --repeats 3 --out-dir "$results"
fi
exit $failed
