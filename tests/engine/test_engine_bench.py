"""``mindvideo bench``: the CPU mode prints a table and writes a complete results file (by default in the current
folder, never into the checkout's benchmarks/results); the GPU mode refuses cleanly without CUDA and its SDPA row
really runs the SDPA attention backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mindvideo.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_cpu_bench_prints_a_table_and_writes_results_in_the_current_folder(tmp_path, monkeypatch):
    before = sorted(p.name for p in RESULTS.iterdir())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["bench", "--frames", "2", "--steps", "1", "--repeats", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path) == ["e2e-cpu.json"]
    data = json.loads((tmp_path / "e2e-cpu.json").read_text())
    assert sorted(p.name for p in RESULTS.iterdir()) == before
    lines = result.output.splitlines()
    assert lines[0].startswith("CPU: 2 frames × 1 steps on ") and "{" not in result.output
    assert lines[1].startswith("backend") and lines[1].split()[-4:] == ["(2-s", "TR)", "vs", "eager"]
    for name, row in data["backends"].items():  # one table row per backend, with the file's own figures
        cells = next(line.split() for line in lines if line.split()[0] == name)
        assert cells[1:3] == [f"{row['median_s']:.3f}", "2"] and cells[-1] == f"{row['speedup_vs_pytorch']:.2f}×"
    assert lines[-1] == f"wrote {tmp_path / 'e2e-cpu.json'}"
    assert set(data["backends"]) == {"pytorch", "torch", "onnxruntime"}
    assert {"device", "commit", "command", "date"} <= set(data["provenance"])
    assert all(row["median_s"] > 0 for row in data["backends"].values())
    assert all(row["unet_evals_per_clip"] == 2 for row in data["backends"].values())  # guided teacher, 1 step


def test_gpu_sdpa_row_runs_the_sdpa_backend(monkeypatch):
    """The "eager fp16 + SDPA" row forces the registry's SDPA backend (on CUDA the automatic choice is the Triton
    kernels). Run here at the tiny size on CPU with a higher-priority backend standing in for Triton: the automatic
    row goes to it, the SDPA row never does."""
    from mindvideo.benchmarks.e2e import EAGER_ROWS, eager_row
    from mindvideo.kernels import registry
    from mindvideo.models import VideoUNetConfig

    calls: list[str] = []

    def accept_all(*args, **kwargs):
        return True

    for op in registry.OPS:
        sdpa = registry._BACKENDS[op]["sdpa"]

        def recorded(*args, _fn=sdpa.fn, **kwargs):
            calls.append("sdpa")
            return _fn(*args, **kwargs)

        def stand_in(*args, _fn=sdpa.fn, **kwargs):
            calls.append("stand-in")
            return _fn(*args, **kwargs)

        table = registry._BACKENDS[op]
        monkeypatch.setitem(table, "sdpa", registry.Backend(op, "sdpa", recorded, 10, sdpa.supports))
        monkeypatch.setitem(table, "stand-in", registry.Backend(op, "stand-in", stand_in, 99, accept_all))
    latents = torch.randn(1, 4, 2, 8, 8)
    rows = {}
    for label, _dtype, attention in EAGER_ROWS:  # fp32 on CPU: the row's backend choice is what is tested
        calls.clear()
        rows[label] = eager_row(VideoUNetConfig.tiny(), torch.float32, attention, latents, 1, 1, device="cpu")
        rows[label]["calls"] = set(calls)
    assert rows["eager_fp16_sdpa"]["calls"] == {"sdpa"} and rows["eager_fp16_sdpa"]["attention_backend"] == "sdpa"
    assert rows["eager_fp32"]["calls"] == {"stand-in"} and rows["eager_fp32"]["attention_backend"] == "automatic"
    assert all(len(row["seconds"]) == 1 and row["seconds"][0] > 0 for row in rows.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_needs_cuda(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "--gpu"])
    assert result.exit_code == 2 and "CUDA" in result.output and os.listdir(tmp_path) == []
    result = runner.invoke(main, ["bench", "--gpu", "--json", str(tmp_path / "x.json")])
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


def _record_decoders(monkeypatch) -> list[tuple[str, str]]:
    """Spy on every backend's decode (the real one still runs): (backend, decoder) per call."""
    from mindvideo.engine.backends import OnnxRuntimeBackend, TorchBackend
    from mindvideo.pipeline import MindVideoPipeline

    seen: list[tuple[str, str]] = []
    for cls, name in ((TorchBackend, "torch"), (OnnxRuntimeBackend, "onnxruntime"), (MindVideoPipeline, "pytorch")):
        original = cls.decode

        def decode(self, latents, *args, _original=original, _name=name, **kwargs):
            decoder = kwargs.get("decoder", args[-1] if args and isinstance(args[-1], str) else "vae")
            seen.append((_name, decoder))
            return _original(self, latents, *args, **kwargs)

        monkeypatch.setattr(cls, "decode", decode)
    return seen


def test_bench_decoder_tiny_is_run_and_recorded(tmp_path, monkeypatch):
    """``--decoder tiny``: every end-to-end row decodes with the (random) tiny decoder and the file says so."""
    from mindvideo.benchmarks.e2e import runtime_bench

    seen = _record_decoders(monkeypatch)
    out = tmp_path / "tiny.json"
    args = ["bench", "--frames", "2", "--steps", "1", "--repeats", "1", "--threads", "1", "--decoder", "tiny"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["decoder"] == "tiny" and result.output.splitlines()[0].endswith(", tiny decoder")
    assert "--decoder tiny" in data["provenance"]["command"]
    assert {name for name, _ in seen} == {"pytorch", "torch", "onnxruntime"} and {d for _, d in seen} == {"tiny"}
    seen.clear()
    result = runtime_bench(2, 1, 1, preset="tiny", device="cpu", dtype="fp32", decoder="tiny")
    assert result["decoder"] == "tiny" and result["loop_c"]["median_s"] > 0
    assert seen and {d for _, d in seen} == {"tiny"}


def test_bench_decoder_tiny_without_one_exits_2(tmp_path):
    from mindvideo.checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "ckpt", "tiny")
    out = tmp_path / "x.json"
    args = ["bench", "--checkpoint", str(ckpt), "--decoder", "tiny", "--repeats", "1", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.output.startswith("error: expected a tiny_decoder/ folder"), result.output
    assert "mindvideo train tiny-decoder" in result.output and not out.exists()
