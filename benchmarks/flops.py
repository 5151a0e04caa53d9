"""Count the FLOPs of one clip: guided teacher vs single-pass student vs student + tiny decoder (SD-1.5 sizes).

Counts with :mod:`mindvideo.flops` (torch's ``FlopCounterMode`` on meta tensors: nothing is allocated, any machine,
seconds), prints the per-frame cost of each network and the per-clip table the README shows, and writes
``benchmarks/results/flops-sd15.json`` with the device, commit, command and date. Example::

    python -m mindvideo.benchmarks.flops                       # 60 frames, 256², teacher 25 steps, student 4
    python benchmarks/flops.py --height 512 --width 512 --out /tmp/flops-512.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mindvideo.benchmarks.provenance import provenance
from mindvideo.checkpoint import sd15_vae_config
from mindvideo.flops import BF16_RATE, markdown_table, sd15_flops
from mindvideo.models.tiny_decoder import TinyDecoderConfig

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {"benchmark": "flops", "model": "SD-1.5 video UNet, SD-1.5 VAE", **provenance(argv)}
    report = sd15_flops(
        height=args.height,
        width=args.width,
        frames=args.frames,
        teacher_steps=args.teacher_steps,
        student_steps=args.student_steps,
        rate=args.rate * 1e12,
    )
    record["tiny_decoder_config"] = TinyDecoderConfig.for_vae(sd15_vae_config()).to_dict()
    per_frame = report["per_frame_gflop"]
    record["vae_over_tiny"] = round(per_frame["vae_decoder"]["total"] / per_frame["tiny_decoder"]["total"], 2)
    return {**record, **report}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--frames", type=int, default=60, help="frames per clip (60 = 2 s at 30 FPS)")
    parser.add_argument("--teacher-steps", type=int, default=25)
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--rate", type=float, default=BF16_RATE / 1e12, help="matrix rate for the floor, TFLOP/s")
    parser.add_argument("--out", type=Path, default=RESULTS / "flops-sd15.json", help="result JSON")
    args = parser.parse_args(argv)
    record = run(args, ["benchmarks/flops.py", *argv])
    for name, counts in record["per_frame_gflop"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in counts.items())
        print(f"{name:<13} GFLOP per frame: {parts}")
    print(f"VAE decoder / tiny decoder = {record['vae_over_tiny']:.1f}")
    print(markdown_table(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
