"""Warm start on the built-in demo: each clip from the previous clip's re-noised final latents, against pure noise.

The demo's 40 held-out windows (consecutive TRs of one test run) are reconstructed one clip at a time in TR order,
as ``mindvideo stream`` decodes them, by the teacher (25 DDIM steps, guided, the recipe's g, seed 3407, VAE
decoder, one CPU thread): cold (every clip from noise) and warm-started at each strength s (clip t from clip t−1's
final latents re-noised to timestep index ⌊(1 − s)·25⌋; the first clip from noise). Scored with the demo's
protocol (pixel classifier, the known class of each clip): video 2-way and 10-way top-1 with the binomial std,
SSIM (colour), UNet evaluations and seconds per clip. Writes ``benchmarks/results/warm_start-demo.json``.

    python benchmarks/warm_start.py
    python benchmarks/warm_start.py --strengths 0.3 0.5 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mindvideo.benchmarks.provenance import provenance
from mindvideo.benchmarks.student import TEACHER_STEPS, scores

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def sequential(pipe, fmri: np.ndarray, cfg, strength: float | None) -> tuple[np.ndarray, float, float]:
    """Clips one by one in TR order through the stream's generator; (clips, UNet calls per clip, s per clip)."""
    from mindvideo.engine.stream import pipeline_generator

    generate = pipeline_generator(pipe, cfg, strength)
    calls = [0]
    inner = pipe.denoise

    def counted(*args):
        calls[0] += 1
        return inner(*args)

    pipe.denoise = counted
    try:
        start = time.perf_counter()
        clips = np.concatenate([generate(window[None]) for window in fmri])
        seconds = time.perf_counter() - start
    finally:
        del pipe.denoise
    return clips, calls[0] / len(fmri), seconds / len(fmri)


def run(assets: Path, strengths: list[float], seed: int) -> dict:
    from mindvideo.demo import load_test_set
    from mindvideo.eval import PixelClassifier
    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    record = json.loads((assets / "recipe.json").read_text(encoding="utf-8"))
    guidance = float(record["demo"]["guidance"])
    test = load_test_set(assets)
    order = np.lexsort((test["index"][:, 1], test["index"][:, 0]))  # (run, TR): the stream's order
    test = {k: v[order] for k, v in test.items()}
    classifier = PixelClassifier.load(assets / "classifier")
    pipe = MindVideoPipeline.from_pretrained(assets / "checkpoint")
    cfg = GenerationConfig(
        num_frames=int(test["video"].shape[1]), num_inference_steps=TEACHER_STEPS, guidance_scale=guidance, seed=seed
    )
    rows = []
    for strength in [None, *strengths]:
        clips, calls, seconds = sequential(pipe, test["fmri"], cfg, strength)
        row = {"warm_start": strength, "unet_calls_per_clip": calls, "seconds_per_clip": seconds}
        rows.append({**row, **scores(clips, test, classifier)})
        v = rows[-1]["video_nway"]
        print(f"warm start {strength}: 2-way {v['2']['mean']:.3f} 10-way {v['10']['mean']:.3f} calls {calls}")
    return {
        "clips": len(test["fmri"]),
        "frames": cfg.num_frames,
        "steps": TEACHER_STEPS,
        "scheduler": "ddim",
        "guidance": guidance,
        "seed": seed,
        "note": "unet_calls_per_clip counts guided calls (each evaluates the UNet on [negative; positive])",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    from mindvideo.demo import default_assets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, help="demo assets [default: the package's]")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5], help="warm-start strengths s")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = sys.argv if argv is None else ["benchmarks/warm_start.py", *argv]
    where = provenance(command)
    result = {"benchmark": "warm-start", **run(args.assets or default_assets(), args.strengths, args.seed)}
    result.update(threads=args.threads, provenance=where)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "warm_start-demo.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
