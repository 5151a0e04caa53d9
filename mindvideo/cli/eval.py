"""``mindvideo eval``: score reconstructions against ground truth and write a report folder.

Wraps :func:`mindvideo.eval.evaluate.evaluate_paths` (read, :func:`~mindvideo.eval.evaluate` and
:func:`~mindvideo.eval.write_report`); prints the headline numbers as a short table.
"""

from __future__ import annotations

from pathlib import Path

import click

from mindvideo.eval.evaluate import evaluate_paths
from mindvideo.eval.report import summary_rows

RANK_KEYS = ("ssim_colour", "ssim_grey", "psnr", "clip_similarity")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command("eval")
@click.option(
    "--pred",
    required=True,
    type=click.Path(path_type=Path),
    help="Reconstructions: .npy (N, F, H, W, 3) uint8, or a folder of per-clip .mp4/.gif/.npy files.",
)
@click.option(
    "--gt",
    required=True,
    type=click.Path(path_type=Path),
    help="Ground truth in the same form; folders are paired with --pred in sorted-name order.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder to write (new or empty).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds an earlier report.")
@click.option(
    "--classifier",
    type=click.Path(path_type=Path),
    help="Frame classifier folder: ViTForImageClassification (reference: google/vit-base-patch16-224) "
    "or a PixelClassifier. Enables frame-level n-way accuracy.",
)
@click.option(
    "--video-classifier",
    type=click.Path(path_type=Path),
    help="Video classifier folder: VideoMAEForVideoClassification (reference: VideoMAE-base, Kinetics-400) "
    "or a frame classifier averaged over frames. Enables video-level n-way accuracy.",
)
@click.option(
    "--clip",
    "clip_model",
    type=click.Path(path_type=Path),
    help="CLIPModel folder. Enables CLIP similarity and CLIP-pcc (adjacent-frame CLIP similarity).",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="Known class per clip (.npy or .txt, N ints), used as the true classes instead of the "
    "classifier's top-3 on the ground truth (simulated data).",
)
@click.option(
    "--scenes",
    type=click.Path(path_type=Path),
    help="Scene id per clip (.npy, e.g. the reference's test_seg_id_3hz.npy, or .txt); ids with '-' mark "
    "clips that cross a scene cut.",
)
@click.option("--keep-scene-cuts", is_flag=True, help="With --scenes: keep clips that cross a scene cut.")
@click.option("--one-per-scene", is_flag=True, help="With --scenes: evaluate only the first clip of each scene.")
@click.option(
    "--n-way",
    "n_ways",
    type=click.IntRange(min=2),
    multiple=True,
    default=(2, 50),
    show_default=True,
    help="n of the n-way accuracy (repeatable).",
)
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="k of the n-way top-k.")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Trials per sample of the n-way protocol.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the n-way class draws.")
@click.option(
    "--rank-by",
    type=click.Choice(RANK_KEYS),
    default="ssim_colour",
    show_default=True,
    help="Per-clip score that picks the best/median/worst clips.",
)
@click.option("--fps", type=float, default=3.0, show_default=True, help="Frame rate of the report GIFs.")
@click.option("--device", default=None, help="Torch device for the models (default: cuda if available, else cpu).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def eval_command(pred: Path, gt: Path, out: Path, overwrite: bool, classifier: Path | None,
                 video_classifier: Path | None, clip_model: Path | None, labels: Path | None, scenes: Path | None,
                 keep_scene_cuts: bool, one_per_scene: bool, n_ways: tuple[int, ...], top_k: int, trials: int,
                 seed: int, rank_by: str, fps: float, device: str | None, progress: bool) -> None:  # fmt: skip
    """Score reconstructed clips against the ground truth and write a report folder: metrics.json, report.md
    (this run's numbers, SSIM convention named; the published Wen 2018 numbers apart, captioned as not comparable
    unless this run scored that test set with the reference protocol), best/median/worst clip grids (GIF and PNG)
    and a bar plot (metrics.png). Nothing is written if anything fails.

    Pixel metrics (colour and grey SSIM, PSNR) always run; n-way accuracy needs --classifier / --video-classifier,
    CLIP metrics need --clip. Models load from local folders only.

    \b
    Example:
      mindvideo eval --pred recon.npy --gt test_clips.npy --out report/
      mindvideo eval --pred 'demo/clip_*.gif' --gt 'truth/clip_*.gif' --out report/
      mindvideo eval --pred samples/ --gt test_clips/ --classifier models/vit-base-patch16-224 \\
          --video-classifier models/videomae-base-kinetics --clip models/clip-vit-base-patch32 \\
          --scenes test_seg_id_3hz.npy --out report/
    """
    metrics = evaluate_paths(
        pred, gt, out,
        classifier=classifier, video_classifier=video_classifier, clip=clip_model, labels=labels, scenes=scenes,
        device=device or _default_device(), report_options={"rank_by": rank_by, "fps": fps, "overwrite": overwrite},
        n_ways=n_ways, top_k=top_k, num_trials=trials, seed=seed, drop_scene_cuts=not keep_scene_cuts,
        one_per_scene=one_per_scene, progress=progress,
    )  # fmt: skip
    rows = summary_rows(metrics)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo(f"report: {out}")
