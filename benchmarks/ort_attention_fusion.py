"""A/B of one student UNet pass under onnxruntime: plain-op attention vs ``com.microsoft.MultiHeadAttention``.

Exports the built-in demo's distilled student UNet (B = 1, ``--frames`` frames), rewrites a copy of the graph with
:func:`mindvideo.export.ort_fusion.fuse_attention`, checks both against PyTorch, then times the two sessions (1
thread, all graph optimisations) in interleaved blocks of five passes and reports medians, the 25th percentile,
minima and the load average before and after. Writes ``benchmarks/results/ort-attention-fusion-f<frames>.json``.

    python benchmarks/ort_attention_fusion.py --frames 60 --blocks 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

RESULTS = Path(__file__).resolve().parent / "results"


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _graphs(work: Path, frames: int) -> tuple[Path, Path, Path]:
    """(student checkpoint, plain-op unet.onnx, fused copy)."""
    from mindvideo.demo import default_assets, student_checkpoint
    from mindvideo.export import Axis, ExportSettings, SpecOptions, export_onnx
    from mindvideo.export.ort_fusion import fuse_attention

    checkpoint = student_checkpoint(default_assets(), work / "student")
    spec = SpecOptions(batch=Axis(1, 1, 2), frames=Axis(1, frames, max(frames, 16)))
    export_onnx(checkpoint, work / "onnx", ExportSettings(spec=spec, verify=False))
    plain = work / "onnx" / "onnx" / "unet.onnx"
    model = onnx.load(str(plain))
    fuse_attention(model)
    fused = work / "unet-fused.onnx"
    onnx.save(model, str(fused))
    return checkpoint, plain, fused


def _parity(checkpoint: Path, export: Path, sessions: dict, frames: int) -> tuple[dict[str, float], dict]:
    """max_rel of each session vs PyTorch on one seeded input, and that input as onnxruntime feeds."""
    from mindvideo.checkpoint import load_components
    from mindvideo.export import load_export
    from mindvideo.export.modules import network_module
    from mindvideo.export.verify import compare, run_ort, run_torch

    spec = load_export(export).specs["unet"]
    inputs = spec.sample_inputs({"batch": 1, "frames": frames}, seed=0)
    want = run_torch(network_module("unet", load_components(checkpoint)), spec, inputs)
    errors = {name: compare(run_ort(s, spec, inputs), want)["noise_pred"].max_rel for name, s in sessions.items()}
    return errors, {t.name: inputs[t.name].to(t.torch_dtype).numpy() for t in spec.inputs}


def _time(sessions: dict, feeds: dict, blocks: int) -> dict[str, list[float]]:
    for s in sessions.values():
        s.run(None, feeds)
    seconds: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            for _ in range(5):
                start = time.perf_counter()
                sessions[name].run(None, feeds)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--blocks", type=int, default=10, help="interleaved blocks of 5 passes per graph")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mindvideo-fusion-ab-"))
    checkpoint, plain, fused = _graphs(work, args.frames)
    sessions = {"plain": _session(plain, args.threads), "fused": _session(fused, args.threads)}
    parity, feeds = _parity(checkpoint, work / "onnx", sessions, args.frames)
    load_before = os.getloadavg()
    seconds = _time(sessions, feeds, args.blocks)
    load_after = os.getloadavg()
    stats = {
        name: {
            "median_ms": float(np.median(t) * 1e3),
            "p25_ms": float(np.percentile(t, 25) * 1e3),
            "min_ms": float(np.min(t) * 1e3),
            "passes": len(t),
        }
        for name, t in seconds.items()
    }
    gain = 1 - stats["fused"]["median_ms"] / stats["plain"]["median_ms"]
    result = {
        "benchmark": "ort-attention-fusion",
        "network": "demo student unet",
        "frames": args.frames,
        "batch": 1,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "fused_nodes": sum(n.op_type == "MultiHeadAttention" for n in onnx.load(str(fused)).graph.node),
        "parity_max_rel_vs_pytorch": parity,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "per_pass": stats,
        "median_gain": gain,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"ort-attention-fusion-f{args.frames}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, s in stats.items():
        ms = f"median {s['median_ms']:7.2f} ms  p25 {s['p25_ms']:7.2f}  min {s['min_ms']:7.2f}"
        print(f"{name:6s} {ms}  n={s['passes']}")
    print(f"fused vs plain (median): {gain * 100:+.1f} %   parity {parity}   load {load_before} → {load_after}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
