#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a GPU session: downloads, for the GPU image's Python 3.12, the wheels of
# what that image lacks (its package list: /work/.library/device/KINDS.md) into .whl/ (git-ignored through
# .git/info/exclude). Then each device call names `.whl` in `carry`; benchmarks/gpu_session.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in diffusers==0.42.1 nibabel==5.4.2 importlib-metadata importlib-resources polygraphy==0.53.6 \
           onnx-graphsurgeon==0.6.1; do  # (av, pydicom: only the mp4/DICOM tests, none of them GPU-marked)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$pkg"
done
ls -la .whl
