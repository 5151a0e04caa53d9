"""benchmarks/cpu_attention.py end to end at a small size: the A/B really compares the two backends."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mindvideo.kernels import cpu

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_attention.py"


@pytest.mark.skipif(not cpu.available(), reason="the C attention extension was not built")
def test_the_ab_runs_each_backend_in_its_own_trace(tmp_path):
    spec = importlib.util.spec_from_file_location("mindvideo_bench_cpu_attention", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--frames", "6", "--blocks", "1", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "cpu-attention-demo-f6.json").read_text())
    assert {"device", "commit", "command", "date"} <= set(result)
    nodes = result["mindvideo_nodes_in_trace"]
    assert nodes["cpu"] == ["mindvideo::sparse_causal_attention_cpu", "mindvideo::temporal_attention_cpu"]
    assert nodes["sdpa"] == []  # the forced side really ran torch's path
    for call in result["calls"].values():
        assert call["max_abs_diff"] < 1e-4 and call["sdpa"]["runs"] == call["cpu"]["runs"] == 10
    assert result["pass"]["cpu"]["runs"] == 5 and result["clip"]["sdpa"]["runs"] == 2
