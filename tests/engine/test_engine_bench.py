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
    assert all(row["unet_evals_per_clip"] == 2 for row in data["backends"].values())  # guided teacher, 1 step


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_needs_cuda(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--gpu", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "CUDA" in result.output and not (tmp_path / "x.json").exists()


def test_readme_table_is_generated_from_the_committed_results(tmp_path):
    """The README's end-to-end table is exactly what benchmarks/report.py makes of benchmarks/results/e2e-*.json,
    and rendering a results file gives one row per backend with its own figures."""
    from mindvideo.benchmarks import report

    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py --readme"
    record = {
        "mode": "cpu",
        "checkpoint": "mindvideo/assets/demo/checkpoint",
        "frames": 6,
        "steps": 25,
        "threads": 1,
        "backends": {"pytorch": {"median_s": 0.5}, "onnxruntime": {"median_s": 0.25}},
        "provenance": {"device": "cpu", "commit": "0123456789", "date": "2026-11-22T00:00:00"},
    }
    table = report.markdown(report.rows([("e2e-x.json", record)]))
    assert (
        "| onnxruntime | 0.250 | 50 | 24.0 | 0.125 | 2.00× |" in table  # a teacher's 2·S, recorded or not
        and "| pytorch | 0.500 | 50 | 12.0 | 0.250 | 1.00× |" in table
    )
    record["backends"]["student"] = {"median_s": 0.1, "unet_evals_per_clip": 4}
    assert "| student | 0.100 | 4 | 60.0 | 0.050 | 5.00× |" in report.markdown(report.rows([("e2e-x.json", record)]))


def test_runtime_bench_times_both_loops_per_stage():
    """The end-to-end part of ``bench --gpu`` (Runtime: encoder → loop → decoder), run here at the tiny size on CPU,
    where the device loop stands in for the CUDA graph."""
    from mindvideo.benchmarks.e2e import runtime_bench

    result = runtime_bench(2, 1, 1, preset="tiny", device="cpu", dtype="fp32")
    for loop in ("loop_device", "loop_c"):
        row = result[loop]
        assert row["median_s"] > 0 and set(row["stages_median_s"]) == {"encode", "loop", "decode"}
        assert row["real_time_factor"] == row["median_s"] / 2.0
        assert row["unet_evals_per_clip"] == 2  # guided teacher, 1 step
