"""Export the full SD-1.5-sized MinD-Video model (random weights) to ONNX and record time, size and memory.

Not run in CI: it writes a ~5 GB checkpoint and needs ~20 GB of RAM for the fp32 UNet. Usage::

    python benchmarks/export_sd15.py --workdir /tmp/sd15 --precision fp32 [--size 256] [--keep]

Writes ``benchmarks/results/export_sd15_<precision>.json`` with the device, commit, command and date, the per-network
export seconds, file sizes, verification errors and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import time
from pathlib import Path

from mindvideo.benchmarks.provenance import provenance
from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.export import Axis, ExportSettings, SpecOptions, export_onnx

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mindvideo_sd15"))
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--size", type=int, default=256, help="video height = width in pixels (MinD-Video: 256)")
    parser.add_argument("--frames", default="1:2:4", help="MIN:OPT:MAX frames (verification runs at opt and min)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the export")
    args = parser.parse_args()
    where = provenance(sys.argv)  # before the run
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    ckpt, out = args.workdir / "ckpt", args.workdir / f"onnx_{args.precision}"
    start, build_seconds = time.perf_counter(), None  # None: an existing checkpoint was reused
    if not ckpt.is_dir():
        build_random_checkpoint(ckpt, "sd15", init_scale=0.0)
        build_seconds = round(time.perf_counter() - start, 1)
    options = SpecOptions(
        precision=args.precision,
        height=args.size,
        width=args.size,
        batch=Axis(1, 2, 2),
        frames=Axis.parse(args.frames, "frames"),
    )
    start = time.perf_counter()
    result = export_onnx(ckpt, out, ExportSettings(spec=options), force=True, progress=print)
    record = {
        "benchmark": "export_sd15",
        **where,
        "model": "SD-1.5 VideoUNet (temporal layers) + FMRIEncoder(4656 voxels) + SD VAE, random weights",
        "precision": args.precision,
        "size": args.size,
        "checkpoint_build_seconds": build_seconds,
        "export_seconds_total": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "networks": {n.name: _row(n, result.manifest) for n in result.networks},
        "tools": result.manifest["tools"],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"export_sd15_{args.precision}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["networks"], indent=2))
    print(f"peak RSS {record['peak_rss_gib']} GiB; wrote {path}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


def _row(n, manifest) -> dict:
    net = manifest["networks"][n.name]
    return {
        "seconds": n.seconds,
        "bytes": n.bytes,
        "files": [f["path"] for f in net["files"]],
        "nodes": net["nodes"],
        "rewrites": net["rewrites"],
        "max_abs": n.max_abs,
        "max_rel": n.max_rel,
        "tolerance": n.tolerance,
    }


if __name__ == "__main__":
    main()
