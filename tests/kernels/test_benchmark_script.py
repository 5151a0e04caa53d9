"""benchmarks/triton_kernels.py: refuses without a GPU, and its bookkeeping (work, targets, files) is right."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "triton_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mindvideo_bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU and found none" in done.stderr
    assert "Nothing was written" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_work_counts(bench):
    # sparse-causal, F = 60, N = 1024, d = 40: 2·60·8 rows of 1024 queries over 2·1024 keys
    flop, nbytes = bench.work("sparse_causal", 60, 1024, 40, 2)
    assert flop == 4 * (2 * 60 * 8) * 1024 * 2048 * 40
    assert nbytes == 4 * (2 * 60 * 8) * 1024 * 40 * 2
    # temporal: 2·1024·8 positions of 60 frames
    flop, nbytes = bench.work("temporal", 60, 1024, 40, 2)
    assert flop == 4 * (2 * 1024 * 8) * 60 * 60 * 40
    assert nbytes == 4 * (2 * 1024 * 8) * 60 * 40 * 2


def _rows(bench, sparse_speedup, temporal_speedup):
    rows = []
    for op, base, speed in (("sparse_causal", "sdpa_gather", sparse_speedup), ("temporal", "sdpa", temporal_speedup)):
        times = {"triton": 1.0, base: speed}
        rows.append(bench._row(op, 60, 1024, 40, bench.torch.bfloat16, times, 1e-3, baselines=(base,)))
    return rows


def test_targets_and_files(bench, tmp_path):
    good = bench.targets(_rows(bench, 1.4, 1.1))
    assert all(good.values())
    bad = bench.targets(_rows(bench, 1.2, 0.9))
    assert not any(bad.values())
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"

    path = tmp_path / "kernels-x.json"
    bench.write_json(path, {"rows": _rows(bench, 1.4, 1.1)})
    assert json.loads(path.read_text())["rows"][0]["speedup_vs"] == {"sdpa_gather": 1.4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels-x.json"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_plot_writes_a_png(bench, tmp_path):
    path = tmp_path / "kernels-x.png"
    assert bench.plot(_rows(bench, 1.4, 1.1), "test", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels-x.png"]
