"""Core commands: ``generate``, ``info``, ``init``, ``demo``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import click
import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.sampling import SCHEDULERS, sampling_defaults

log = logging.getLogger(__name__)

GENERATE_BACKENDS = ("pytorch", "torch", "torch-compile", "onnxruntime", "tensorrt")


def print_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    """A two-column table on stdout."""
    if title:
        click.echo(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


def parse_range(text: str) -> tuple[int, int | None]:
    """``"START:END"`` (either side may be empty) → (start, end or None)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start or 0), int(end) if end else None
    except ValueError:
        raise MindVideoError("expected --trs as START:END, e.g. 10:14 or :", repr(text), "fix the range") from None


@click.command()
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Checkpoint folder (ours or the reference layout).",
)
@click.option(
    "--fmri",
    "fmri_path",
    type=click.Path(path_type=Path),
    help="Preprocessed windows: .npy/.npz shaped (window, voxels) or (batch, window, voxels).",
)
@click.option(
    "--scan",
    type=click.Path(path_type=Path),
    help="A raw run (NIfTI, CIFTI, .npy/.h5 (T, V)) read through the checkpoint's data_transform/ instead of --fmri.",
)
@click.option("--trs", default=":", show_default=True, help="With --scan: the window range START:END (TR indices).")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="A prepared dataset (mindvideo data prepare): reconstruct every window of --split instead of --fmri.",
)
@click.option("--split", default="test", show_default=True, help="With --data: the split to reconstruct.")
@click.option("--max-clips", type=click.IntRange(min=1), help="With --data: only the first N windows.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=0),
    help="Windows per pipeline call; each call reuses --seed. 0 = all at once (the reference's noise convention) "
    "[default: 0; with --data 8].",
)
@click.option(
    "--eval",
    "eval_out",
    type=click.Path(path_type=Path),
    help="With --data: score the clips against the split's video.npy and write a report folder (as mindvideo eval).",
)
@click.option("--classifier", type=click.Path(path_type=Path), help="With --eval: frame classifier folder.")
@click.option("--video-classifier", type=click.Path(path_type=Path), help="With --eval: video classifier folder.")
@click.option("--clip", "clip_model", type=click.Path(path_type=Path), help="With --eval: CLIPModel folder.")
@click.option("--labels", type=click.Path(path_type=Path), help="With --eval: known class per clip (.npy/.txt).")
@click.option(
    "--negative-fmri",
    type=click.Path(path_type=Path),
    help="Negative window for adversarial guidance [default: mean of --fmri; with --data the split's mean].",
)
@click.option(
    "--frames",
    type=int,
    help="Frames per clip (6 = 3 FPS for a 2-s TR; 60 = 30 FPS) [default: 6; --eval: the split's].",
)
@click.option(
    "--height", type=int, help="Output height, a multiple of 8 [default: the UNet's native size; --eval: the split's]."
)
@click.option(
    "--width", type=int, help="Output width, a multiple of 8 [default: the UNet's native size; --eval: the split's]."
)
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps [default: 50; 4 with --scheduler lcm].")
@click.option(
    "--guidance",
    type=float,
    help="Guidance scale g (1 = no guidance) [default: 12.5; a distilled student: clamped into its g range].",
)
@click.option(
    "--scheduler",
    type=click.Choice(SCHEDULERS),
    help="[default: ddim; a distilled student: the first scheduler it was distilled for, e.g. lcm].",
)
@click.option(
    "--decoder",
    type=click.Choice(["vae", "tiny"]),
    default="vae",
    show_default=True,
    help="vae: the checkpoint's VAE decoder; tiny: its distilled tiny_decoder/ (`mindvideo train tiny-decoder`), "
    "~1/28 of the VAE's FLOPs with less detail (engine backends: the export's tiny_decoder graph or engine).",
)
@click.option("--seed", default=3407, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 …")
@click.option("--fps", type=float, help="Frame rate of .mp4/.gif output [default: frames / 2 s].")
@click.option(
    "--backend",
    type=click.Choice(GENERATE_BACKENDS),
    default="pytorch",
    show_default=True,
    help="pytorch: the reference-exact PyTorch pipeline; the others run the engine (C sampling loop).",
)
@click.option(
    "--engine", type=click.Path(path_type=Path), help="Export folder (mindvideo export) for onnxruntime/tensorrt."
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "c", "device", "graph"]),
    default="auto",
    show_default=True,
    help="Engine backends: c = C loop on the host; device = per-step loop on the device; graph = the whole loop as "
    "one CUDA graph; auto = graph for --backend torch on CUDA, else c.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output .mp4, .gif or .npy ((B, 3, F, H, W) floats in [0, 1]).",
)
def generate(
    checkpoint,
    fmri_path,
    scan,
    trs,
    data,
    split,
    max_clips,
    batch_size,
    eval_out,
    classifier,
    video_classifier,
    clip_model,
    labels,
    negative_fmri,
    frames,
    height,
    width,
    steps,
    guidance,
    scheduler,
    decoder,
    seed,
    dtype,
    device,
    fps,
    backend,
    engine,
    loop,
    out,
):
    """Reconstruct video from fMRI windows with a checkpoint.

    \b
    Examples:
      mindvideo generate --checkpoint CKPT --fmri window.npy --frames 6 --steps 50 --out clip.mp4
      mindvideo generate --checkpoint CKPT --scan run1.dtseries.nii --trs 10:14 --out clips.gif
      mindvideo generate --backend onnxruntime --engine exported/ --fmri window.npy --out clip.mp4
      mindvideo generate --checkpoint CKPT --fmri window.npy --decoder tiny --out clip.mp4
      mindvideo generate --backend onnxruntime --engine exported/ --fmri window.npy --decoder tiny --out clip.mp4
      mindvideo generate --checkpoint CKPT --data prepared/ --split test --batch-size 8 --out recon.npy \\
          --eval report/ --classifier models/vit-base-patch16-224
    """
    from mindvideo.media import check_video_path, read_fmri_array, write_video, write_videos
    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline, scan_windows

    out = check_video_path(out)
    if sum(x is not None for x in (fmri_path, scan, data)) != 1:
        raise MindVideoError("expected exactly one of --fmri, --scan or --data", "none or several", "pass one input")
    if data is None and (eval_out is not None or max_clips is not None):
        raise MindVideoError("expected --data with --eval / --max-clips", "no --data", "pass a prepared dataset")
    extras = {
        "--classifier": classifier,
        "--video-classifier": video_classifier,
        "--clip": clip_model,
        "--labels": labels,
    }
    if eval_out is None and any(v is not None for v in extras.values()):
        named = ", ".join(k for k, v in extras.items() if v is not None)
        raise MindVideoError("expected --eval REPORT with the evaluation options", named, "add --eval report/")
    first, last = parse_range(trs)
    explicit_negative = negative_fmri is not None
    fmri = None if fmri_path is None else read_fmri_array(fmri_path)
    if fmri is not None and fmri.ndim == 3 and fmri.shape[0] == 0:
        raise MindVideoError(f"expected at least one fMRI window in {fmri_path}", "shape (0, …)", "check the file")
    gt = None
    if data is not None:
        fmri, gt, split_negative = prepared_split(data, split, max_clips, need_video=eval_out is not None)
        negative_fmri = negative_fmri or split_negative
        if gt is not None:
            frames, height, width = frames or gt.shape[1], height or gt.shape[2], width or gt.shape[3]
    negative = None if negative_fmri is None else read_fmri_array(negative_fmri)
    label_array = None
    if eval_out is not None:
        from mindvideo.eval.evaluate import check_model_folders

        check_model_folders({"frame_classifier": classifier, "video_classifier": video_classifier, "clip": clip_model})
        if labels is not None:
            label_array = _labels(labels, len(gt), split_length(data, split))
    cfg = GenerationConfig(
        num_frames=frames or 6,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        scheduler=scheduler,
        seed=seed,
        decoder=decoder,
    )
    if gt is not None:
        _check_matches_truth(cfg, gt)
    if backend == "pytorch" and loop != "auto":
        raise MindVideoError(
            "expected an engine backend (torch, onnxruntime, tensorrt) with --loop",
            "--backend pytorch",
            "add --backend torch",
        )
    if backend == "pytorch":
        if checkpoint is None:
            raise MindVideoError("expected --checkpoint for the pytorch backend", "none", "pass the checkpoint folder")
        model = MindVideoPipeline.from_pretrained(checkpoint, dtype=dtype, device=device)
    else:
        from mindvideo.engine.runtime import load_runtime

        model = load_runtime(backend, checkpoint=checkpoint, engine=engine, device=device, dtype=dtype, loop=loop)
    # settings left unset follow the model: a distilled student names its schedulers and g range
    facts = getattr(model, "unet_facts", None) or model.unet.config
    scheduler, steps, guidance = sampling_defaults(facts, scheduler, steps, guidance)
    cfg = dataclasses.replace(cfg, scheduler=scheduler, num_inference_steps=steps, guidance_scale=guidance)
    if facts.guidance_embedding:  # a student's negative was fixed at distillation
        if negative is not None and explicit_negative:
            log.warning("a distilled student ignores --negative-fmri (its negative was fixed at distillation)")
        negative = None
    if scan is not None:
        fmri = scan_windows(model.transform, scan, first, last)
    if batch_size is None:
        batch_size = 8 if data is not None else 0
    start = time.perf_counter()
    output = "float" if out.suffix == ".npy" else "uint8"
    video = _generate_batches(model, fmri, negative, cfg, batch_size, output)
    seconds = time.perf_counter() - start
    rows = [("clips", str(video.shape[0])), ("shape", str(tuple(video.shape))), ("seconds", f"{seconds:.2f}")]
    # the reconstructions are written first: a failing evaluation must not throw away the generation
    if out.suffix == ".npy":
        paths = [write_video(out, video)]
    else:
        paths = write_videos(out, video, fps or cfg.num_frames / 2.0)
    rows.append(("written", ", ".join(map(str, paths))))
    if gt is not None:
        from mindvideo.eval.evaluate import evaluate_videos
        from mindvideo.eval.report import summary_rows

        clips = video if output == "uint8" else np.round(video.transpose(0, 2, 3, 4, 1) * 255).astype(np.uint8)
        metrics = evaluate_videos(
            clips, gt, eval_out, classifier=classifier, video_classifier=video_classifier, clip=clip_model,
            device=device, labels=label_array, sources={"pred": str(out), "gt": str(data)},
        )  # fmt: skip
        rows += [*summary_rows(metrics), ("report", str(eval_out))]
    print_table(rows)


def prepared_split(data: Path, split: str, max_clips: int | None, need_video: bool):
    """(fmri windows, ground-truth video or None, the split's negative_fmri.npy) of a prepared dataset split."""
    folder = Path(data) / split
    if not (folder / "fmri.npy").is_file():
        raise MindVideoError(
            f"expected a prepared dataset split with {split}/fmri.npy", f"none in {data}", "check --data and --split"
        )
    fmri = np.load(folder / "fmri.npy", mmap_mode="r")[:max_clips]
    if len(fmri) == 0:
        raise MindVideoError(f"expected fMRI windows in {folder / 'fmri.npy'}", "an empty split", "check --split")
    video = None
    if need_video:
        if not (folder / "video.npy").is_file():
            raise MindVideoError(
                f"expected {split}/video.npy in {data} to evaluate against",
                "no stimulus video in the prepared split",
                "prepare the dataset with its videos (without --no-video), or drop --eval",
            )
        video = np.load(folder / "video.npy", mmap_mode="r")[:max_clips]
    negative = folder / "negative_fmri.npy"
    return np.array(fmri), None if video is None else np.array(video), negative if negative.is_file() else None


def _labels(path: Path, clips: int, windows: int) -> np.ndarray:
    """``--labels``: one per evaluated clip, or one per window of the whole split (then cut like the windows)."""
    from mindvideo.eval.evaluate import read_labels

    try:
        return read_labels(path, clips)
    except MindVideoError:
        if windows == clips:
            raise
    try:
        return read_labels(path, windows)[:clips]
    except MindVideoError:
        raise MindVideoError(
            f"expected {clips} labels (the evaluated clips) or {windows} (every window of the split) in {path}",
            "another count",
            "pass one integer label per clip",
        ) from None


def split_length(data: Path, split: str) -> int:
    """Windows in a prepared split (read from the .npy header only)."""
    return int(np.load(Path(data) / split / "fmri.npy", mmap_mode="r").shape[0])


def _check_matches_truth(cfg, gt: np.ndarray) -> None:
    if (cfg.num_frames, cfg.height, cfg.width) != gt.shape[1:4]:
        raise MindVideoError(
            f"expected clips shaped like the ground truth (frames, height, width) = {gt.shape[1:4]} to evaluate",
            f"{(cfg.num_frames, cfg.height, cfg.width)} from --frames/--height/--width",
            "leave --frames/--height/--width unset with --eval, or prepare the data at the model's size",
        )


def _generate_batches(model, fmri: np.ndarray, negative, cfg, batch_size: int, output: str) -> np.ndarray:
    """Every window in batches of ``batch_size`` (0 = one call); each call draws its noise from ``cfg.seed``. A
    negative with one window per input is cut like the inputs."""
    size = batch_size or len(fmri)
    per_window = negative is not None and np.ndim(negative) == 3 and len(negative) == len(fmri) > 1
    parts = [
        model(fmri[i : i + size], negative[i : i + size] if per_window else negative, cfg, output=output)
        for i in range(0, len(fmri), size)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(["tiny", "sd15"]),
    help="Describe a preset size instead of a folder (no weights built).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(checkpoint, preset, as_json):
    """Print each component's config and parameter count.

    \b
    Examples:
      mindvideo info CKPT
      mindvideo info --preset sd15
    """
    from mindvideo.checkpoint_info import describe_checkpoint, describe_preset

    if (checkpoint is None) == (preset is None):
        raise MindVideoError("expected a CHECKPOINT folder or --preset", "both or neither", "give exactly one")
    report = describe_checkpoint(checkpoint) if checkpoint else describe_preset(preset)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, part in report.items():
        rows = [("parameters", f"{part['parameters']:,}")]
        rows += [(k, f"{v:,}") for k, v in part.get("breakdown", {}).items()]
        rows += [(k, json.dumps(v)) for k, v in part["config"].items()]
        print_table(rows, title=name)


@click.command()
@click.option("--preset", type=click.Choice(["tiny", "sd15"]), default="tiny", show_default=True)
@click.option("--num-voxels", type=int, help="Voxels the encoder takes [default: 128 tiny, 4656 sd15].")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
def init(preset, num_voxels, seed, out):
    """Write a randomly initialised checkpoint (for trying export, engines and benchmarks).

    \b
    Example:
      mindvideo init --preset sd15 --out ckpt-sd15-random/
    """
    from mindvideo.checkpoint import build_random_checkpoint

    if out.exists():
        raise MindVideoError("expected a new folder for --out", f"{out} exists", "remove it or pick another path")
    build_random_checkpoint(out, preset, num_voxels=num_voxels, seed=seed)
    click.echo(f"wrote {preset} checkpoint to {out}")


@click.command()
@click.option(
    "--out",
    default="mindvideo-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder (new or empty).",
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds an earlier demo output.")
@click.option("--clips", type=int, help="Reconstruct only the first N held-out clips [default: all 40].")
@click.option("--steps", type=int, help="DDIM steps [default: the recipe's, 25].")
@click.option("--guidance", type=float, help="Adversarial guidance scale [default: the recipe's].")
@click.option("--seed", default=3407, show_default=True)
@click.option("--no-mp4", is_flag=True, help="Skip all_clips.mp4.")
def demo(out, overwrite, clips, steps, guidance, seed, no_mp4):
    """Reconstruct held-out simulated clips from fMRI with the built-in model, next to a ridge-regression baseline.

    The model ships in the package (trained by `mindvideo train recipe demo`, CPU, minutes). Writes side-by-side
    ground truth | reconstruction | ridge GIFs per clip, all_clips.gif/.mp4, metrics.json (n-way semantic
    accuracy, SSIM, PSNR) and pred.npy/gt.npy for `mindvideo eval`; prints the scores.

    \b
    Example:
      mindvideo demo
      mindvideo demo --out demo/ --clips 8 --steps 10
      mindvideo demo --overwrite            # run again into mindvideo-demo/
    """
    from mindvideo.demo import run_demo, summary_rows

    metrics = run_demo(
        out, clips=clips, steps=steps, guidance=guidance, seed=seed, mp4=not no_mp4, overwrite=overwrite
    )
    s = metrics["settings"]
    click.echo(f"mindvideo demo: {s['clips']} held-out clips, {s['steps']} DDIM steps, guidance {s['guidance']}")
    rows = [("metric", "reconstruction", "ridge", "chance"), *summary_rows(metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  " + "  ".join(f"{v:<{w}}" for v, w in zip(row, widths)))
    click.echo(f"  seconds {metrics['seconds']}; written to {out} (clips/, all_clips.gif, metrics.json)")


COMMANDS: list[click.Command] = [generate, info, init, demo]
