"""The README's end-to-end table and plot, generated from ``benchmarks/results/e2e-*.json`` (never typed by hand).

    python benchmarks/report.py            # print the Markdown table
    python benchmarks/report.py --readme   # rewrite the table between the markers in README.md, and the PNG plot
    python benchmarks/report.py --check    # exit 1 if README.md's table differs from the results (a test runs this)

One row per (result file, backend): device, model, frames × steps, the backend, median seconds per clip, UNet
evaluations per clip (2·S for a guided teacher, S for a student), frames/s,
the real-time factor for a 2-s TR (< 1 keeps up with the scanner), the speed-up over the reference-style eager
PyTorch pipeline measured in the same run, and the commit and date the file records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- e2e-table:start -->", "<!-- e2e-table:end -->"
BASELINES = {"cpu": "pytorch", "gpu": "eager_fp32"}  # the reference-style run each mode compares against
GPU_ROWS = ("eager_fp32", "eager_fp16_sdpa", "python_loop_bf16", "cuda_graph_bf16")


def load_results(folder: Path = RESULTS) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, record)`` of every end-to-end result, sorted by mode, device and frame count."""
    found = [(p.name, json.loads(p.read_text())) for p in sorted(folder.glob("e2e-*.json"))]
    return sorted(found, key=lambda item: (item[1]["mode"], item[1]["provenance"]["device"], item[1]["frames"]))


def rows(results: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    out = []
    for name, r in results:
        where = r["provenance"]
        threads = r.get("threads", "?")
        device = (
            where["device"] if r["mode"] == "gpu" else f"{where['device']}; {threads} thread{'s' * (threads != 1)}"
        )
        model = "SD-1.5 size, random" if r["mode"] == "gpu" else _model_name(r.get("checkpoint", ""))
        backends = dict(r["backends"]) if r["mode"] == "cpu" else {k: r[k] for k in GPU_ROWS if k in r}
        baseline = backends[BASELINES[r["mode"]]]["median_s"]
        runtime = r.get("runtime_end_to_end") or {}
        for loop in ("graph", "c"):  # GPU: the whole Runtime, encoder + loop + decoder (not comparable to loop-only)
            if f"loop_{loop}" in runtime:
                backends[f"runtime end-to-end, {loop} loop"] = {**runtime[f"loop_{loop}"], "end_to_end": True}
        for backend, row in backends.items():
            out.append(
                [
                    device,
                    model,
                    f"{r['frames']} × {r['steps']}",
                    backend.replace("_", " "),
                    f"{row['median_s']:.3f}",
                    str(row.get("unet_evals_per_clip") or _unet_evals(r)),
                    f"{r['frames'] / row['median_s']:.1f}",
                    f"{row['median_s'] / 2.0:.3f}",
                    "–" if row.get("end_to_end") else f"{baseline / row['median_s']:.2f}×",
                    f"`{where['commit'][:7]}` {where['date'][:10]} [{name}](benchmarks/results/{name})",
                ]
            )
    return out


def _unet_evals(record: dict[str, Any]) -> int:
    """UNet evaluations per clip of a results file written before they were recorded (all of a teacher)."""
    guided = record.get("guided", True) if record["mode"] == "gpu" else record.get("guidance", 12.5) > 1.0
    return (2 if guided else 1) * record["steps"]


def _model_name(checkpoint: str) -> str:
    if "assets/demo" in checkpoint:
        return "demo model"
    return "tiny random" if "mindvideo-bench-" in checkpoint or not checkpoint else Path(checkpoint).name


def markdown(table: list[list[str]]) -> str:
    head = ["device", "model", "frames × steps", "backend", "s / clip", "UNet evals / clip", "frames/s"]
    head += ["RTF (2-s TR)", "vs eager", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def readme_with(table: str, text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} … {END} block")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table}\n{END}{after}"


def plot(results: list[tuple[str, dict[str, Any]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cpu = [r for _, r in results if r["mode"] == "cpu" and "assets/demo" in r.get("checkpoint", "")]
    if not cpu:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for backend in cpu[0]["backends"]:
        points = sorted((r["frames"], r["frames"] / r["backends"][backend]["median_s"]) for r in cpu)
        ax.plot(*zip(*points), marker="o", label=backend)
    ax.set_xlabel("frames per clip")
    ax.set_ylabel("frames / s (end to end)")
    ax.set_title(f"demo model on CPU, {cpu[0]['steps']} steps, {cpu[0].get('threads')} thread(s)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--readme", action="store_true", help="rewrite README.md's table and the PNG plot")
    group.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    args = parser.parse_args(argv)
    results = load_results()
    table = markdown(rows(results))
    if args.check:
        current = README.read_text(encoding="utf-8")
        if readme_with(table, current) != current:
            print("README.md's e2e table differs from benchmarks/results: run python benchmarks/report.py --readme")
            return 1
        return 0
    if args.readme:
        README.write_text(readme_with(table, README.read_text(encoding="utf-8")), encoding="utf-8")
        if plot(results, RESULTS / "e2e-cpu.png"):
            print(f"wrote {RESULTS / 'e2e-cpu.png'}")
        print("README.md table updated")
        return 0
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
