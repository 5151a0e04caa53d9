"""``mindvideo bench``: the CPU mode writes a complete results file; the GPU mode refuses cleanly without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mindvideo.cli import main


def test_cpu_bench_writes_results(tmp_path):
    out = tmp_path / "e2e.json"
    args = ["bench", "--frames", "2", "--steps", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["backends"]) == {"pytorch", "torch", "onnxruntime"}
    assert {"device", "commit", "command", "date"} <= set(data["provenance"])
    assert all(row["median_s"] > 0 for row in data["backends"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_needs_cuda(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--gpu", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "CUDA" in result.output and not (tmp_path / "x.json").exists()
