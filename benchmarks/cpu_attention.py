"""A/B of the fused C attention kernels (``kernels/csrc/attention_cpu.c``, backend ``cpu``) against torch's SDPA path
(backend ``sdpa``) on the CPU, at the built-in demo student's shapes.

Three levels, one thread, every A/B in interleaved blocks (A then B, then B then A, ...) so that a drift of the
machine's speed hits both sides alike:

* ``calls``: one call of each attention at the demo UNet's shapes for ``--frames`` frames (8×8 and 4×4 latents),
  and at two shapes near the ``cpu`` backend's limit of 2¹⁶ scores per block;
* ``pass``: one student UNet pass (B = 1) through the torch backend's frozen trace, which holds whichever kernels the
  backend chose when it was traced;
* ``clip``: one student clip (4 LCM steps, tiny decoder) through the torch backend and the C sampling loop, as
  ``benchmarks/student.py --part timing`` runs it.

Writes ``benchmarks/results/cpu-attention-demo-f<frames>.json``::

    python benchmarks/cpu_attention.py --frames 60 --blocks 6
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mindvideo.benchmarks.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("sdpa", "cpu")


def interleaved(calls: dict[str, Callable[[], object]], blocks: int, per_block: int) -> dict[str, dict]:
    """Seconds of each call over ``blocks`` interleaved blocks of ``per_block`` runs (after one warm-up run each):
    median, 25th percentile and minimum in ms."""
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            for _ in range(per_block):
                start = time.perf_counter()
                calls[name]()
                seconds[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": statistics.median(s) * 1e3,
            "p25_ms": float(np.percentile(s, 25) * 1e3),
            "min_ms": min(s) * 1e3,
            "runs": len(s),
        }
        for name, s in seconds.items()
    }


def _with(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    from mindvideo import kernels

    def call():
        with kernels.use_backend(backend):
            return fn()

    return call


def call_shapes(frames: int) -> dict[str, tuple]:
    """The demo UNet's attention calls at B = 1 (op, q shape, extra args per call site), and two calls near the
    ``cpu`` backend's block limit."""
    return {
        "temporal 8x8 (B·N, h, F, d)": ("temporal_attention", (64, 4, frames, 8), ()),
        "temporal 4x4": ("temporal_attention", (16, 4, frames, 16), ()),
        "sparse-causal 8x8 (B·F, h, N, d)": ("sparse_causal_attention", (frames, 4, 64, 8), (frames, (-2, -1))),
        "sparse-causal 4x4": ("sparse_causal_attention", (frames, 4, 16, 16), (frames, (-2, -1))),
        # near the cpu backend's limit of 2^16 scores per block, with SD-1.5's head dim
        "temporal F=256 d=40 (limit)": ("temporal_attention", (16, 8, 256, 40), ()),
        "sparse-causal N=180 d=40 (limit)": ("sparse_causal_attention", (16, 8, 180, 40), (16, (-2, -1))),
    }


def bench_calls(frames: int, blocks: int) -> dict:
    from mindvideo import kernels

    out = {}
    for label, (op, shape, extra) in call_shapes(frames).items():
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
        args = (q, k, v, *extra)
        calls = {b: functools.partial(getattr(kernels, op), *args, backend=b) for b in BACKENDS}
        max_abs = float((calls["cpu"]() - calls["sdpa"]()).abs().max())
        out[label] = {"op": op, "shape": list(shape), "max_abs_diff": max_abs, **interleaved(calls, blocks, 10)}
        print(f"{label}: " + ", ".join(f"{b} {out[label][b]['median_ms']:.3f} ms" for b in BACKENDS), flush=True)
    return out


def bench_model(frames: int, blocks: int) -> dict:
    """Per pass and per clip, each backend in its own torch backend (its own frozen trace)."""
    from mindvideo.demo import default_assets, student_checkpoint
    from mindvideo.engine.backends import TorchBackend
    from mindvideo.engine.runtime import Runtime
    from mindvideo.pipeline import GenerationConfig

    assets = default_assets()
    checkpoint = student_checkpoint(assets, Path(tempfile.mkdtemp(prefix="mindvideo-cpu-attn-")) / "student")
    record = json.loads((assets / "recipe.json").read_text(encoding="utf-8"))
    cfg = GenerationConfig(frames, None, None, 4, float(record["demo"]["guidance"]), "lcm", decoder="tiny")
    fmri = np.load(assets / "test_set.npz")["fmri"][:1]
    latents = np.random.default_rng(0).standard_normal((1, 4, frames, 8, 8)).astype(np.float32)
    runtimes = {b: Runtime(TorchBackend(checkpoint), loop="c") for b in BACKENDS}
    passes, clips = {}, {}
    for b, rt in runtimes.items():
        cond = rt.backend.encode(fmri)
        g = torch.tensor([cfg.guidance_scale])
        passes[b] = _with(b, lambda rt=rt, cond=cond, g=g: rt.backend.denoise(latents, 500.0, cond, g))
        clips[b] = _with(b, lambda rt=rt: rt(fmri, None, cfg))
    per_pass = interleaved(passes, blocks, 5)
    print("pass: " + ", ".join(f"{b} {per_pass[b]['median_ms']:.1f} ms" for b in BACKENDS), flush=True)
    per_clip = interleaved(clips, blocks, 2)
    print("clip: " + ", ".join(f"{b} {per_clip[b]['median_ms']:.1f} ms" for b in BACKENDS), flush=True)
    nodes = {
        b: sorted(
            {
                n.kind()
                for t in rt.backend.frozen.traces.values()
                for n in t.graph.nodes()
                if n.kind().startswith("mindvideo::")
            }
        )
        for b, rt in runtimes.items()
    }
    return {"pass": per_pass, "clip": per_clip, "mindvideo_nodes_in_trace": nodes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--blocks", type=int, default=6, help="interleaved blocks per A/B")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from mindvideo.kernels import cpu

    if not cpu.available():
        sys.exit("error: the C attention extension is not built (pip install -e . with a C compiler)")
    torch.set_num_threads(args.threads)
    result = {"benchmark": "cpu-attention", **provenance(sys.argv), "frames": args.frames, "threads": args.threads}
    result["calls"] = bench_calls(args.frames, args.blocks)
    result.update(bench_model(args.frames, args.blocks))
    result["load_average_after"] = list(os.getloadavg())
    clip = result["clip"]
    result["clip_gain"] = 1 - clip["cpu"]["median_ms"] / clip["sdpa"]["median_ms"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"cpu-attention-demo-f{args.frames}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
