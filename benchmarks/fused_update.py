"""Time the fused guidance + sampler update on host buffers: the C extension against numpy and torch (CPU).

For each latent shape and step kind (DDIM guided; DDIM η > 0 with noise; DPM-Solver++(2M) guided with its state
buffer) it times, interleaved in one run so machine load hits every contender alike:

- ``c``: ``mindvideo.engine._host_loop.fused_update`` (one pass, float64 maths, GIL released);
- ``numpy_twin``: ``mindvideo.engine.host_loop_numpy.fused_update`` (the pure-Python twin, same float64 maths);
- ``numpy_f32`` / ``torch_f32``: the update written the usual way, ``eps = neg + g·(pos − neg)`` then the step,
  as float32 array expressions (what a per-step Python loop over ``scheduler.step`` costs at best);
- ``torch_twin``: ``mindvideo.engine.device_update.fused_update_torch`` (the torch reference, float64 maths).

Reports the median time per update, effective bandwidth, and each contender's time over C's, and writes
``benchmarks/results/fused_update-<host>.json`` (device, commit, command, date, load). Example::

    python benchmarks/fused_update.py --repeats 40 --torch-threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mindvideo.benchmarks.provenance import provenance
from mindvideo.engine import StepCoefficients
from mindvideo.engine.device_update import fused_update_torch
from mindvideo.engine.host_loop import IMPLEMENTATIONS

SHAPES = {  # (B, C, F, h, w): 60 frames = one 2-s TR at 30 FPS, 256² and 512² frames
    "2x4x60x32x32": (2, 4, 60, 32, 32),
    "2x4x60x64x64": (2, 4, 60, 64, 64),
    "4x4x60x64x64": (4, 4, 60, 64, 64),
}
KINDS = {  # name -> (coefficients, float32 buffers read + written per element)
    "ddim": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0), 4),
    "ddim_eta": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0.3), 5),
    "dpmpp_2m": (StepCoefficients(0.52, 0, 0.61, -0.13, 1.4, -0.98, 0), 6),
}
GUIDANCE = 12.5


def contenders(k: StepCoefficients, b: dict[str, np.ndarray]) -> dict[str, Callable[[], None]]:
    """Zero-argument callables doing one update in place on the buffers ``b`` (numpy) / their torch views."""
    state = b["state"] if k.stateful else None
    noise = b["noise"] if k.n else None
    t = {name: torch.from_numpy(a) for name, a in b.items()}
    f = {name: np.float32(v) for name, v in k._asdict().items()}

    def numpy_f32() -> None:
        m = b["neg"] + np.float32(GUIDANCE) * (b["pos"] - b["neg"])
        y = f["a"] * b["x"] + f["b"] * m
        if k.stateful:
            d = f["p"] * b["x"] + f["q"] * m
            y += f["c"] * d + f["e"] * b["state"]
            b["state"][...] = d
        if k.n:
            y += f["n"] * b["noise"]
        b["x"][...] = y

    def torch_f32() -> None:
        m = t["neg"] + GUIDANCE * (t["pos"] - t["neg"])
        y = k.a * t["x"] + k.b * m
        if k.stateful:
            d = k.p * t["x"] + k.q * m
            y += k.c * d + k.e * t["state"]
            t["state"].copy_(d)
        if k.n:
            y += k.n * t["noise"]
        t["x"].copy_(y)

    twin = IMPLEMENTATIONS["python"].fused_update
    out = {
        "numpy_twin": lambda: twin(b["x"], b["pos"], b["neg"], GUIDANCE, k, state, noise),
        "numpy_f32": numpy_f32,
        "torch_f32": torch_f32,
        "torch_twin": lambda: fused_update_torch(
            t["x"], t["pos"], t["neg"], GUIDANCE, k, t["state"] if state is not None else None,
            t["noise"] if noise is not None else None,
        ),
    }  # fmt: skip
    if "c" in IMPLEMENTATIONS:
        out = {
            "c": lambda: IMPLEMENTATIONS["c"].fused_update(b["x"], b["pos"], b["neg"], GUIDANCE, k, state, noise)
        } | out
    return out


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(repeats: int, shapes: list[str]) -> list[dict]:
    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        rng = np.random.default_rng(0)
        buffers = {
            name: rng.standard_normal(shape, dtype=np.float32) for name in ("x", "pos", "neg", "state", "noise")
        }
        buffers["x"] *= 1e-3  # keep x bounded over many repeated updates
        for kind, (k, buffers_touched) in KINDS.items():
            medians = time_interleaved(contenders(k, buffers), repeats)
            base = medians.get("c")
            nbytes = 4 * buffers_touched * int(np.prod(shape))
            for name, seconds in medians.items():
                rows.append({
                    "shape": shape_name, "kind": kind, "impl": name, "median_ms": 1e3 * seconds,
                    "GB_per_s": nbytes / seconds / 1e9, "time_over_c": seconds / base if base else None,
                })  # fmt: skip
            print(_format_group(shape_name, kind, rows[-len(medians) :]), flush=True)
    return rows


def _format_group(shape: str, kind: str, rows: list[dict]) -> str:
    cells = "  ".join(
        f"{r['impl']} {r['median_ms']:7.3f} ms" + (f" ({r['time_over_c']:.1f}x)" if r["time_over_c"] else "")
        for r in rows
    )
    return f"{shape:13s} {kind:9s} {cells}"


def environment(argv: list[str]) -> dict:
    return {
        "benchmark": "fused_update",
        **provenance(argv),
        "torch_threads": torch.get_num_threads(),
        "guidance_scale": GUIDANCE,
        "c_extension_built": "c" in IMPLEMENTATIONS,
    }


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per contender (median reported)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv[1:])
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)  # C and numpy ufuncs are single-threaded: 1 compares per core
    env = environment(argv)
    rows = run(args.repeats, args.shapes)
    env["load_average_after"] = list(os.getloadavg())
    out = args.out or Path(__file__).parent / "results" / f"fused_update-{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**env, "repeats": args.repeats, "results": rows}, indent=2) + "\n")
    tmp.replace(out)  # never a half-written result file
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
