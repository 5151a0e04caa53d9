"""The few-step student against its teacher on the built-in demo: accuracy per UNet evaluation, and real time.

``accuracy`` (``benchmarks/results/student-demo.json`` and ``student-demo.png``): the demo's 40 held-out clips
(6 frames, g = the recipe's 5.0, all clips in one batch, one CPU thread) reconstructed by the teacher (25 DDIM steps,
guided: 2 UNet evaluations per step) and by the student (``assets/student``: 1, 2, 4, 8 LCM steps, one evaluation
per step), each decoded by the VAE and by the tiny decoder, once per sampling seed (default six, 3407–3412: one
seed's rate moves by ~0.02 between seeds, as much as the teacher–student gap); scored with the demo's protocol
(pixel classifier, the known class of each clip as the true class): video 2-way and 10-way top-1 (mean over seeds,
with the binomial std of 40 clips and the std over seeds), SSIM (colour), UNet evaluations and seconds per clip
(the fastest seed's run); the ridge baseline beside them; and the paired teacher − student gaps with their standard
error over seeds.

``timing`` (``student-demo-rtf-f<frames>.json``): one clip of 60 frames, one thread, the teacher (25 DDIM steps,
guided, VAE decoder) against the student (4 LCM steps, tiny decoder) through the eager PyTorch pipeline, the torch
backend + C loop and onnxruntime + C loop (the graphs exported here first), the engine as ``benchmarks/e2e.py``
drives it; the real-time factor is seconds per clip / 2 s.

    python benchmarks/student.py                       # both parts
    python benchmarks/student.py --part accuracy --steps 1 2 4 8 --seeds 3407 3408 3409 3410 3411 3412
    python benchmarks/student.py --part timing --frames 60 --repeats 3
    python benchmarks/student.py --readme              # rewrite README.md's tables from the result files
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mindvideo.benchmarks.e2e import TR_SECONDS, timed
from mindvideo.benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
MARKERS = {
    "accuracy": ("<!-- student-accuracy:start -->", "<!-- student-accuracy:end -->"),
    "timing": ("<!-- student-timing:start -->", "<!-- student-timing:end -->"),
}
TEACHER_STEPS = 25


# ---------------------------------------------------------------------------------------------------- accuracy


def scores(pred: np.ndarray, test: dict[str, np.ndarray], classifier) -> dict:
    """Video 2/10-way top-1 and SSIM (colour) of ``pred``: ``mean``, ``binomial_std`` = √(p(1−p)/clips) (the spread
    of a top-1 rate over this many clips) and ``trial_std`` (the evaluation's std over its n-way draws; 0 for
    10-way with 10 classes, where every class is a candidate)."""
    from mindvideo.eval import FrameAveragedVideoClassifier, evaluate

    m = evaluate(
        pred,
        test["video"],
        frame_classifier=classifier,
        video_classifier=FrameAveragedVideoClassifier(classifier),
        labels=test["labels"].astype(np.int64),
        n_ways=(2, 10),
        progress=False,
    )
    video = {}
    for n in ("2", "10"):
        p = m["video_nway"][n]["mean"]
        binomial = float(np.sqrt(p * (1 - p) / len(pred)))
        video[n] = {"mean": p, "binomial_std": binomial, "trial_std": m["video_nway"][n]["std"]}
    return {"video_nway": video, "ssim_colour": m["ssim_colour"]["mean"]}


def accuracy(assets: Path, steps_list: list[int], seeds: list[int]) -> dict:
    """Every row scored once per sampling seed (the same seeds for every model and decoder); the row's ``video_nway``
    holds the mean over seeds beside each seed's value, and ``gaps`` the paired teacher − student differences."""
    from mindvideo.demo import load_test_set, ridge_baseline, student_pipeline
    from mindvideo.eval import PixelClassifier
    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    record = json.loads((assets / "recipe.json").read_text(encoding="utf-8"))
    guidance = float(record["demo"]["guidance"])
    test = load_test_set(assets)
    classifier = PixelClassifier.load(assets / "classifier")
    teacher = MindVideoPipeline.from_pretrained(assets / "checkpoint")
    student = student_pipeline(assets)
    base = GenerationConfig(
        num_frames=int(test["video"].shape[1]),
        num_inference_steps=TEACHER_STEPS,
        guidance_scale=guidance,
    )
    runs = [("teacher", teacher, base, 2 * TEACHER_STEPS)]
    runs += [
        (f"student {s}", student, dataclasses.replace(base, num_inference_steps=s, scheduler="lcm"), s)
        for s in steps_list
    ]
    rows = []
    for name, pipe, cfg, evals in runs:
        for decoder in ("vae", "tiny"):
            per_seed, seconds = [], []
            for seed in seeds:
                cfg = dataclasses.replace(cfg, decoder=decoder, seed=seed)
                start = time.perf_counter()
                video = pipe(test["fmri"], None, cfg, progress=False)
                seconds.append((time.perf_counter() - start) / len(video))
                per_seed.append(scores(video, test, classifier))
            row = {"model": name.split()[0], "steps": cfg.num_inference_steps, "scheduler": cfg.scheduler}
            row.update({"decoder": decoder, "unet_evals_per_clip": evals, "seconds_per_clip": min(seconds)})
            rows.append({**row, **over_seeds(per_seed, len(test["fmri"]))})
            print(f"{name:<11} {decoder:<4} {rows[-1]['video_nway']} ssim {rows[-1]['ssim_colour']:.3f}", flush=True)
    start = time.perf_counter()
    ridge = ridge_baseline(assets / "baseline_train.npz", test["fmri"], test["video"].shape[1:4])
    ridge_row = {"seconds_per_clip": (time.perf_counter() - start) / len(ridge), **scores(ridge, test, classifier)}
    return {
        "clips": len(test["fmri"]),
        "frames": int(test["video"].shape[1]),
        "guidance": guidance,
        "seeds": list(seeds),
        "batch": len(test["fmri"]),
        "rows": rows,
        "gaps": gaps(rows),
        "ridge": ridge_row,
        "ground_truth": scores(test["video"], test, classifier),
    }


def over_seeds(per_seed: list[dict], clips: int) -> dict:
    """:func:`scores` of each seed → their mean (``mean``, with the binomial std of that rate over ``clips`` clips),
    the std over seeds (``seed_std``, 0 for one seed) and each seed's rate (``per_seed``)."""
    video = {}
    for n in ("2", "10"):
        values = [s["video_nway"][n]["mean"] for s in per_seed]
        p = float(np.mean(values))
        video[n] = {
            "mean": p,
            "binomial_std": float(np.sqrt(p * (1 - p) / clips)),
            "seed_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "trial_std": float(np.mean([s["video_nway"][n]["trial_std"] for s in per_seed])),
            "per_seed": values,
        }
    return {"video_nway": video, "ssim_colour": float(np.mean([s["ssim_colour"] for s in per_seed]))}


def gaps(rows: list[dict]) -> list[dict]:
    """Teacher − student video n-way for every student row, against the teacher with the same decoder and against
    the teacher with the VAE: the mean of the per-seed differences (paired: same seed, same clips) and its standard
    error over seeds (``se``, 0 for one seed)."""
    teacher = {r["decoder"]: r for r in rows if r["model"] == "teacher"}
    out = []
    for r in (r for r in rows if r["model"] == "student"):
        for against in dict.fromkeys((r["decoder"], "vae")):
            entry = {"steps": r["steps"], "decoder": r["decoder"], "teacher_decoder": against}
            for n in ("2", "10"):
                diff = np.subtract(teacher[against]["video_nway"][n]["per_seed"], r["video_nway"][n]["per_seed"])
                se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
                entry[n] = {"mean": float(diff.mean()), "se": se}
            out.append(entry)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, n in zip(axes, ("2", "10")):
        for model, marker in (("student", "o-"), ("teacher", "s")):
            for decoder, colour in (("vae", "C0"), ("tiny", "C1")):
                rows = [r for r in result["rows"] if r["model"] == model and r["decoder"] == decoder]
                x = [r["unet_evals_per_clip"] for r in rows]
                y = [r["video_nway"][n]["mean"] for r in rows]
                err = [r["video_nway"][n]["binomial_std"] for r in rows]
                ax.errorbar(x, y, yerr=err, fmt=marker, color=colour, capsize=3, label=f"{model}, {decoder} decoder")
        ax.axhline(result["ridge"]["video_nway"][n]["mean"], color="grey", ls="--", label="ridge")
        ax.axhline(1 / int(n), color="black", ls=":", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("UNet evaluations per clip")
        ax.set_ylabel(f"video {n}-way top-1")
        ax.set_title(f"video {n}-way, {result['clips']} held-out demo clips")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ timing


def timing(assets: Path, frames: int, repeats: int, threads: int, seed: int) -> dict:
    """Seconds per clip of the teacher (guided DDIM, VAE) and the student (4 LCM steps, tiny decoder)."""
    from mindvideo.demo import student_checkpoint
    from mindvideo.engine.backends import OnnxRuntimeBackend, TorchBackend
    from mindvideo.engine.runtime import Runtime
    from mindvideo.export import Axis, ExportSettings, SpecOptions, export_onnx
    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    record = json.loads((assets / "recipe.json").read_text(encoding="utf-8"))
    guidance = float(record["demo"]["guidance"])
    work = Path(tempfile.mkdtemp(prefix="mindvideo-student-bench-"))
    models = {
        "teacher": (assets / "checkpoint", GenerationConfig(frames, None, None, TEACHER_STEPS, guidance, "ddim")),
        "student": (
            student_checkpoint(assets, work / "student"),
            GenerationConfig(frames, None, None, 4, guidance, "lcm", decoder="tiny"),
        ),
    }
    fmri = np.load(assets / "test_set.npz")["fmri"][:1]
    profile = SpecOptions(frames=Axis(1, frames, max(frames, 16)))
    out: dict = {"frames": frames, "threads": threads, "batch": 1, "guidance": guidance, "models": {}}
    for name, (checkpoint, cfg) in models.items():
        export_onnx(checkpoint, work / f"{name}-onnx", ExportSettings(spec=profile))
        pipe = MindVideoPipeline.from_pretrained(checkpoint)
        runtimes = {
            "torch + C loop": Runtime(TorchBackend(checkpoint), loop="c"),
            "onnxruntime + C loop": Runtime(OnnxRuntimeBackend(work / f"{name}-onnx", threads=threads), loop="c"),
        }
        calls = {"pytorch pipeline": lambda pipe=pipe, cfg=cfg: pipe(fmri, None, cfg, progress=False)}
        calls.update({k: (lambda rt=rt, cfg=cfg: rt(fmri, None, cfg)) for k, rt in runtimes.items()})
        rows = {}
        for backend, call in calls.items():
            seconds = timed(call, repeats)
            median = statistics.median(seconds)
            rows[backend] = {"seconds": seconds, "median_s": median, "real_time_factor": median / TR_SECONDS}
            if backend in runtimes:
                t = runtimes[backend].times
                rows[backend]["stages_last_s"] = {k: getattr(t, k) for k in ("encode", "loop", "decode")}
            print(f"{name} {backend}: {median:.3f} s/clip, RTF {median / TR_SECONDS:.3f}", flush=True)
        evals = runtimes["torch + C loop"].unet_evals(cfg)
        out["models"][name] = {
            "steps": cfg.num_inference_steps,
            "scheduler": cfg.scheduler,
            "decoder": cfg.decoder,
            "unet_evals_per_clip": evals,
            "backends": rows,
        }
    return out


# ------------------------------------------------------------------------------------------------------ tables


def accuracy_table(result: dict) -> list[str]:
    head = "| model | steps | decoder | UNet evals / clip | video 2-way | video 10-way | SSIM (colour) | s / clip |"
    lines = [head, "|" + "---|" * 8]

    def nway(r, n):
        return f"{r['video_nway'][n]['mean']:.3f} ± {r['video_nway'][n]['binomial_std']:.3f}"

    for r in result["rows"]:
        cells = [r["model"], f"{r['steps']} {r['scheduler'].upper()}", r["decoder"], str(r["unet_evals_per_clip"])]
        cells += [nway(r, "2"), nway(r, "10"), f"{r['ssim_colour']:.3f}", f"{r['seconds_per_clip']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    rid = result["ridge"]
    cells = ["ridge", "–", "–", "0", nway(rid, "2"), nway(rid, "10"), f"{rid['ssim_colour']:.3f}"]
    lines.append("| " + " | ".join([*cells, f"{rid['seconds_per_clip']:.3f}"]) + " |")
    if result.get("gaps"):
        seeds = len(result.get("seeds", [None]))
        lines += [
            "",
            f"Teacher − student (mean of the paired differences over {seeds} seeds ± its standard error):",
            "",
        ]
        lines += ["| student steps | student decoder | teacher decoder | video 2-way gap | video 10-way gap |"]
        lines += ["|" + "---|" * 5]
        for g in result["gaps"]:
            cells = [f"{g['steps']} LCM", g["decoder"], g["teacher_decoder"]]
            cells += [f"{g[n]['mean']:+.3f} ± {g[n]['se']:.3f}" for n in ("2", "10")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def timing_table(result: dict) -> list[str]:
    lines = ["| model | steps | decoder | UNet evals / clip | backend | s / clip | RTF (2-s TR) |", "|" + "---|" * 7]
    for name, m in result["models"].items():
        for backend, row in m["backends"].items():
            cells = [name, f"{m['steps']} {m['scheduler'].upper()}", m["decoder"], str(m["unet_evals_per_clip"])]
            cells += [backend, f"{row['median_s']:.3f}", f"{row['real_time_factor']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def rewrite_readme(results: Path = RESULTS, readme: Path = README, frames: int = 60) -> None:
    """Replace the text between each pair of :data:`MARKERS` in README.md with the table of its result file."""
    text = readme.read_text(encoding="utf-8")
    files = {"accuracy": results / "student-demo.json", "timing": results / f"student-demo-rtf-f{frames}.json"}
    makers = {"accuracy": accuracy_table, "timing": timing_table}
    for part, (start, end) in MARKERS.items():
        if not files[part].is_file() or start not in text:
            continue
        table = "\n".join(makers[part](json.loads(files[part].read_text())))
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), f"{start}\n{table}\n{end}", text, flags=re.S)
    readme.write_text(text, encoding="utf-8")


# -------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("accuracy", "timing", "both"), default="both")
    parser.add_argument("--assets", type=Path, help="demo assets [default: the package's]")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="the student's LCM steps")
    parser.add_argument("--frames", type=int, default=60, help="timing: frames per clip")
    parser.add_argument("--repeats", type=int, default=3, help="timing: timed calls after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--seed", type=int, default=3407, help="timing: the sampling seed")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(3407, 3413)), help="accuracy: the sampling seeds"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--readme", action="store_true", help="only rewrite README.md's tables from the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from mindvideo.demo import default_assets

    args = parse_args(argv)
    if args.readme:
        rewrite_readme(args.out_dir, frames=args.frames)
        return
    torch.set_num_threads(args.threads)
    assets = args.assets or default_assets()
    command = sys.argv if argv is None else ["benchmarks/student.py", *argv]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.part in ("accuracy", "both"):
        where = provenance(command)
        result = {"benchmark": "student-accuracy", **accuracy(assets, args.steps, args.seeds), "provenance": where}
        result["threads"] = args.threads
        (args.out_dir / "student-demo.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, args.out_dir / "student-demo.png")
        print("\n".join(accuracy_table(result)))
    if args.part in ("timing", "both"):
        where = provenance(command)
        result = {"benchmark": "student-timing", **timing(assets, args.frames, args.repeats, args.threads, args.seed)}
        result["provenance"] = where
        (args.out_dir / f"student-demo-rtf-f{args.frames}.json").write_text(json.dumps(result, indent=2) + "\n")
        print("\n".join(timing_table(result)))


if __name__ == "__main__":
    main()
