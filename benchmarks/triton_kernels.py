"""Time the Triton attention kernels against the torch paths on SD-1.5's attention shapes.

One command on a CUDA machine, from the repository root::

    python benchmarks/triton_kernels.py                # correctness grid (pytest -m gpu tests/kernels), then timings
    python benchmarks/triton_kernels.py --skip-checks  # timings only (e.g. when the grid already ran)
    python benchmarks/triton_kernels.py --checks-only  # the correctness grid only

Shapes: the SD-1.5 UNet at 256² (32×32 latent): N = 1024 / 256 / 64 tokens with head dims 40 / 80 / 160, 8 heads,
F = 6, 16, 60 frames, batch 2 (classifier-free / adversarial guidance). Contenders:

* sparse-causal: ``triton`` (K/V read in place) vs ``sdpa_gather`` (gather/concat of frames + SDPA, the torch
  backend) vs ``sdpa_pregathered`` (SDPA on K/V gathered beforehand: attention alone, the copy not counted); also
  the same kernel in the TensorRT plugin's form (dense inputs, its fixed 48-KiB tile: ``plugin_median_ms``,
  ``plugin_vs_triton``), timed for the record (its tiles were chosen without a GPU) but not part of the targets;
* temporal: ``triton`` (several positions per program) vs ``sdpa``.

Timing: CUDA events around each call, L2 flushed before each, warm-up first, median reported. Throughput uses the
nominal work: 4·rows·queries·keys·d FLOP and the compulsory bytes (q, k, v read once, out written once). Inputs use
the UNet's memory layout (head-split views of the projections). Writes
``benchmarks/results/kernels-<device>.json`` (device, commit, command, date, versions, every time) and a PNG plot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from mindvideo.benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
HEADS, GUIDANCE_BATCH = 8, 2
LEVELS = [(1024, 40), (256, 80), (64, 160)]  # (tokens N, head dim d) of SD-1.5's attention at 256²
OFFSETS = (-2, -1)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
NO_GPU = (
    "benchmarks/triton_kernels.py needs a CUDA GPU and found none: the Triton kernels only run compiled on a GPU "
    "(their CPU checks are `pytest tests/kernels`). Nothing was written."
)
TARGET_SPARSE = 1.3  # the goal: ≥ 1.3× over gather/concat + SDPA at N = 1024 with 60 frames


# 1. inputs, work and timing ------------------------------------------------------------------------------------------
def unet_layout(rows: int, length: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """``(rows, heads, length, d)`` as the UNet passes it: a head-split view of a ``(rows, length, C)`` projection."""
    return torch.randn(rows, length, HEADS, d, device="cuda", dtype=dtype).transpose(1, 2)


def work(op: str, frames: int, n: int, d: int, elt: int) -> tuple[float, float]:
    """Nominal (FLOP, bytes) of one call; the same numbers divide every contender's time."""
    if op == "sparse_causal":
        rows, queries, keys = GUIDANCE_BATCH * frames * HEADS, n, len(OFFSETS) * n
    else:
        rows, queries, keys = GUIDANCE_BATCH * n * HEADS, frames, frames
    return 4.0 * rows * queries * keys * d, 4.0 * rows * queries * d * elt


def time_ms(fn: Callable[[], object], warmup: int, reps: int, flush: torch.Tensor) -> float:
    """Median milliseconds of ``fn`` over ``reps`` CUDA-event-timed calls, each after an L2 flush."""
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(reps):
        flush.zero_()  # inside the UNet the previous layer has evicted this one's inputs
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm())


# 2. one shape of each op ---------------------------------------------------------------------------------------------
def bench_sparse(frames: int, n: int, d: int, dtype: torch.dtype, warmup: int, reps: int, flush) -> dict:
    import torch.nn.functional as F

    from mindvideo.kernels.plugin_abi import plugin_tile
    from mindvideo.kernels.reference import gather_frames, sparse_causal_reference, sparse_causal_sdpa
    from mindvideo.kernels.sparse_causal import (
        _sparse_causal_fwd_tuned,
        sparse_causal_attention_fwd,
        sparse_causal_plugin_attention,
    )

    bf = GUIDANCE_BATCH * frames
    q, k, v = (unet_layout(bf, n, d, dtype) for _ in range(3))
    kg, vg = gather_frames(k, frames, OFFSETS), gather_frames(v, frames, OFFSETS)
    out = sparse_causal_attention_fwd(q, k, v, frames, OFFSETS)
    # the oracle on the first clip and two heads (the whole shape in fp32 would take ~8 GB at F = 60)
    ref = sparse_causal_reference(q[:frames, :2], k[:frames, :2], v[:frames, :2], frames, OFFSETS)
    err = rel_err(out[:frames, :2], ref)
    contenders = {
        "triton": lambda: sparse_causal_attention_fwd(q, k, v, frames, OFFSETS, out=out),
        "sdpa_gather": lambda: sparse_causal_sdpa(q, k, v, frames, OFFSETS),
        "sdpa_pregathered": lambda: F.scaled_dot_product_attention(q, kg, vg),
    }
    times = {name: time_ms(fn, warmup, reps, flush) for name, fn in contenders.items()}
    row = _row("sparse_causal", frames, n, d, dtype, times, err, baselines=("sdpa_gather", "sdpa_pregathered"))
    row["triton_config"] = str(getattr(_sparse_causal_fwd_tuned, "best_config", None))
    # the TensorRT plugin's kernel: dense (B, F, heads, N, d) tensors (as TensorRT hands them over), its fixed tile.
    # For the record only, and never run on a GPU before: a failure is written down, not allowed to stop the run.
    row["plugin_tile"] = plugin_tile(DTYPE_NAMES[dtype], d)
    try:
        dense = [t.contiguous().view(GUIDANCE_BATCH, frames, HEADS, n, d) for t in (q, k, v)]
        plugin_out = sparse_causal_plugin_attention(*dense, OFFSETS)
        row["plugin_rel_err_vs_reference"] = rel_err(plugin_out.view(bf, HEADS, n, d)[:frames, :2], ref)
        plugin_ms = time_ms(
            lambda: sparse_causal_plugin_attention(*dense, OFFSETS, out=plugin_out), warmup, reps, flush
        )
        row["plugin_median_ms"] = plugin_ms
        row["plugin_vs_triton"] = times["triton"] / plugin_ms
    except Exception as error:
        row["plugin_error"] = f"{type(error).__name__}: {error}"[:500]
    return row


def bench_temporal(frames: int, n: int, d: int, dtype: torch.dtype, warmup: int, reps: int, flush) -> dict:
    from mindvideo.kernels.reference import temporal_reference, temporal_sdpa
    from mindvideo.kernels.temporal import _temporal_fwd_tuned, temporal_attention_fwd

    rows = GUIDANCE_BATCH * n
    q, k, v = (unet_layout(rows, frames, d, dtype) for _ in range(3))
    out = temporal_attention_fwd(q, k, v)
    err = rel_err(out, temporal_reference(q, k, v))
    contenders = {
        "triton": lambda: temporal_attention_fwd(q, k, v, out=out),
        "sdpa": lambda: temporal_sdpa(q, k, v),
    }
    times = {name: time_ms(fn, warmup, reps, flush) for name, fn in contenders.items()}
    row = _row("temporal", frames, n, d, dtype, times, err, baselines=("sdpa",))
    row["triton_config"] = str(getattr(_temporal_fwd_tuned, "best_config", None))
    return row


def _row(op, frames, n, d, dtype, times, err, baselines) -> dict:
    flops, nbytes = work(op, frames, n, d, torch.finfo(dtype).bits // 8)
    return {
        "op": op,
        "frames": frames,
        "batch": GUIDANCE_BATCH,
        "heads": HEADS,
        "tokens": n,
        "head_dim": d,
        "frame_offsets": list(OFFSETS) if op == "sparse_causal" else None,
        "rel_err_vs_reference": err,
        "flop": flops,
        "bytes": nbytes,
        "median_ms": times,
        "tflops": {k: flops / (t * 1e-3) / 1e12 for k, t in times.items()},
        "gbps": {k: nbytes / (t * 1e-3) / 1e9 for k, t in times.items()},
        "speedup_vs": {b: times[b] / times["triton"] for b in baselines},
    }


# 3. checks, provenance, output ---------------------------------------------------------------------------------------
def run_checks() -> dict:
    """The GPU correctness grid (tests marked ``gpu`` in tests/kernels); parallel workers when xdist is there."""
    if not (ROOT / "tests" / "kernels").is_dir():
        raise SystemExit(f"no tests/kernels under {ROOT}: run from a checkout, or pass --skip-checks")
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-m", "gpu", "-q", "-x", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", "8"]  # the grid is compile-bound: compile on several cores at once
    print("correctness grid:", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-300:]]
    print(done.stdout[-3000:] if done.returncode else tail[0], flush=True)
    return {"command": " ".join(cmd[2:]), "returncode": done.returncode, "summary": tail[0]}


def run_provenance(dtype_name: str, args: argparse.Namespace) -> dict:
    import triton  # noqa: F401  (its version is recorded)

    props = torch.cuda.get_device_properties(0)
    return {
        **provenance(sys.argv),
        "device_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "dtype": dtype_name,
        "warmup": args.warmup,
        "reps": args.reps,
    }


def targets(rows: list[dict]) -> dict:
    """The speed goals, judged on this run."""
    sparse = [r for r in rows if r["op"] == "sparse_causal" and r["tokens"] == 1024 and r["frames"] == 60]
    temporal = [r for r in rows if r["op"] == "temporal"]
    return {
        f"sparse_causal >= {TARGET_SPARSE}x sdpa_gather at N=1024, F=60": (
            all(r["speedup_vs"]["sdpa_gather"] >= TARGET_SPARSE for r in sparse) if sparse else None
        ),
        "temporal faster than sdpa at every shape": (
            all(r["speedup_vs"]["sdpa"] > 1.0 for r in temporal) if temporal else None
        ),
    }


def write_json(path: Path, payload: dict) -> None:
    """Write to a temporary name, then rename: no half-written result files."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def plot(rows: list[dict], title: str, path: Path) -> bool:
    """Speed-up of the Triton kernels per shape, one panel per op; False (with a note) without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for ax, op in zip(axes, ("sparse_causal", "temporal")):
        mine = [r for r in rows if r["op"] == op]
        labels = [f"N={r['tokens']}\nd={r['head_dim']}\nF={r['frames']}" for r in mine]
        baselines = list(mine[0]["speedup_vs"]) if mine else []
        width = 0.8 / max(1, len(baselines))
        for i, base in enumerate(baselines):
            xs = [j + (i - (len(baselines) - 1) / 2) * width for j in range(len(mine))]
            ax.bar(xs, [r["speedup_vs"][base] for r in mine], width, label=f"vs {base}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        if op == "sparse_causal":
            ax.axhline(TARGET_SPARSE, color="red", linestyle="--", linewidth=0.8, label=f"target {TARGET_SPARSE}×")
        ax.set_xticks(range(len(mine)), labels, fontsize=7)
        ax.set_ylabel("speed-up of triton (×, higher is better)")
        ax.set_title(op.replace("_", "-") + " attention")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def format_row(row: dict) -> str:
    """One line of the console table."""
    shape = f"{row['op']:>13}  F={row['frames']:<3} N={row['tokens']:<5} d={row['head_dim']:<4}"
    mine = f"triton {row['median_ms']['triton']:8.3f} ms {row['tflops']['triton']:6.1f} TFLOP/s"
    mine += f" {row['gbps']['triton']:7.1f} GB/s"
    if "plugin_median_ms" in row:
        mine += f"  plugin {row['plugin_median_ms']:8.3f} ms"
    speedups = "  ".join(f"{b} {x:.2f}×" for b, x in row["speedup_vs"].items())
    return f"{shape} {mine}  {speedups}  err {row['rel_err_vs_reference']:.1e}"


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# 4. main -------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/triton_kernels.py --dtype bf16 --frames 6 16 60",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input precision (default bf16)")
    parser.add_argument("--frames", type=int, nargs="+", default=[6, 16, 60], help="clip lengths F (default 6 16 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    parser.add_argument("--reps", type=int, default=50, help="timed calls; the median is reported (default 50)")
    parser.add_argument("--skip-checks", action="store_true", help="skip the GPU correctness grid")
    parser.add_argument("--checks-only", action="store_true", help="run the correctness grid and stop")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if importlib.util.find_spec("triton") is None:
        print("benchmarks/triton_kernels.py needs Triton (pip install triton). Nothing was written.", file=sys.stderr)
        return 2

    meta = run_provenance(args.dtype, args)  # before the run
    checks = {"skipped": True} if args.skip_checks else run_checks()
    if checks.get("returncode"):
        print("the GPU correctness grid failed: no timings taken (fix the kernels, or --skip-checks)", file=sys.stderr)
        return 1
    if args.checks_only:
        return 0

    dtype = DTYPES[args.dtype]
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # larger than any L2 (H100: 50 MB)
    rows = []
    for frames in args.frames:
        for n, d in LEVELS:
            for bench in (bench_sparse, bench_temporal):
                row = bench(frames, n, d, dtype, args.warmup, args.reps, flush)
                rows.append(row)
                print(format_row(row), flush=True)

    slug = device_slug(meta["device"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / f"kernels-{slug}.json", args.out_dir / f"kernels-{slug}.png"
    payload = {**meta, "checks": checks, "targets": targets(rows), "rows": rows}
    title = f"mindvideo attention kernels, {meta['device']}, {args.dtype}, batch {GUIDANCE_BATCH}, {HEADS} heads"
    payload["plot"] = png_path.name if plot(rows, title, png_path) else None
    write_json(json_path, payload)
    print(f"targets: {payload['targets']}\nwrote {json_path}" + (f" and {png_path}" if payload["plot"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
