"""Core commands: ``generate``, ``info``, ``init``, ``demo``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mindvideo.errors import MindVideoError
from mindvideo.sampling import SCHEDULERS

log = logging.getLogger(__name__)

GENERATE_BACKENDS = ("pytorch", "torch", "torch-compile", "onnxruntime", "tensorrt")


def print_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    """A two-column table on stdout."""
    if title:
        click.echo(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


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
@click.option(
    "--trs",
    default=":",
    show_default=True,
    help="With --scan (an error without): the window range START:END (TR indices).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="A prepared dataset (mindvideo data prepare): reconstruct every window of --split instead of --fmri.",
)
@click.option(
    "--split", default="test", show_default=True, help="With --data (an error without): the split to reconstruct."
)
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
@click.option("--overwrite", is_flag=True, help="With --eval: replace an earlier report in that folder.")
@click.option(
    "--negative-fmri",
    type=click.Path(path_type=Path),
    help="Negative window for adversarial guidance [default: with --data the split's negative_fmri.npy, else the "
    "checkpoint's data_transform/ mean training window, else the mean of the input windows]. The one used is "
    "printed and recorded in OUT.json.",
)
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    help="Frames per clip (6 = 3 FPS for a 2-s TR; 60 = 30 FPS) [default: 6; --eval: the split's].",
)
@click.option(
    "--height",
    type=click.IntRange(min=1),
    help="Output height, a multiple of the VAE's factor (8 for SD) [default: the UNet's native size; --eval: the "
    "split's].",
)
@click.option(
    "--width",
    type=click.IntRange(min=1),
    help="Output width, a multiple of the VAE's factor (8 for SD) [default: the UNet's native size; --eval: the "
    "split's].",
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
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="Precision of the pytorch and torch backends; onnxruntime/tensorrt run the export's: another is refused.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu, cuda, cuda:1 … (onnxruntime: cpu or cuda; tensorrt: its GPU, cuda; others are refused).",
)
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
    "--ray",
    is_flag=False,
    flag_value="local",
    metavar="[ADDRESS]",
    help="With --data: run the batches as shards on a Ray cluster: a running one's HOST:PORT (ray start --head), "
    "ray://HOST:PORT or auto; alone, a local cluster on 127.0.0.1. Same noise per window as without --ray: on CPU "
    "the output equals a run with the workers' thread count bit for bit.",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(min=1),
    help="With --ray: model-holding workers [default: one per GPU (--device cuda) or per --ray-cpus-per-worker CPUs].",
)
@click.option(
    "--ray-cpus-per-worker",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="With --ray: CPUs each worker reserves; it runs int(N) torch threads (at least 1).",
)
@click.option(
    "--ray-gpus-per-worker",
    type=click.FloatRange(min=0),
    help="With --ray [default: 1 with --device cuda, else 0].",
)
@click.option(
    "--ray-work",
    type=click.Path(path_type=Path),
    help="With --ray: the shard folder; a job run again reuses the finished shards [default: OUT.shards].",
)
@click.option(
    "--sweep",
    multiple=True,
    metavar="KEY=V1,V2",
    help="With --ray, repeatable: run every combination of guidance / steps / seed values in one job; each writes "
    "OUT's name with the setting (recon.guidance7.5-seed1.npy) and, with --eval, REPORT/<setting>/.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output .mp4, .gif or .npy ((B, 3, F, H, W) floats in [0, 1]); OUT.json records the settings.",
)
def generate(**options):
    """Reconstruct video from fMRI windows with a checkpoint.

    Prints the clips' shape, the time taken, the files written (the videos and OUT.json, which records the inputs,
    the model and the settings) and which negative condition the guidance used.

    \b
    Examples:
      mindvideo generate --checkpoint CKPT --fmri window.npy --frames 6 --steps 50 --out clip.mp4
      mindvideo generate --checkpoint CKPT --scan run1.dtseries.nii --trs 10:14 --out clips.gif
      mindvideo generate --backend onnxruntime --engine exported/ --fmri window.npy --out clip.mp4
      mindvideo generate --checkpoint CKPT --fmri window.npy --decoder tiny --out clip.mp4
      mindvideo generate --backend onnxruntime --engine exported/ --fmri window.npy --decoder tiny --out clip.mp4
      mindvideo generate --checkpoint CKPT --data prepared/ --split test --batch-size 8 --out recon.npy \\
          --eval report/ --classifier models/vit-base-patch16-224
      mindvideo generate --checkpoint CKPT --data prepared/ --out recon.npy --ray --ray-workers 2 \\
          --sweep guidance=3,7.5
    """
    from mindvideo.cli import generation as steps

    options["sweep"] = tuple(options["sweep"])
    opts = steps.GenerateOptions(**options, given=steps.given_options(options))
    steps.check_options(opts)
    request = steps.resolve_request(opts)
    if opts.ray is not None:
        from mindvideo.cluster import run_generate

        for run in run_generate(opts, request):
            print_table(run.rows, title=run.tag or None)
            click.echo(f"negative condition: {run.request.negative_note['text']}")
        return
    model = steps.load_model(opts)
    request = steps.finish_request(model, request, opts)
    print_table(steps.write_and_score(model, request, opts))
    click.echo(f"negative condition: {request.negative_note['text']}")


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
@click.option("--steps", type=int, help="The teacher's DDIM steps [default: the recipe's, 25].")
@click.option("--guidance", type=float, help="Guidance scale g (teacher and student) [default: the recipe's].")
@click.option("--student-steps", default=4, show_default=True, help="The distilled student's LCM steps.")
@click.option(
    "--student-decoder",
    type=click.Choice(["vae", "tiny"]),
    default="vae",
    show_default=True,
    help="The student's decoder: the VAE's, or the distilled tiny decoder.",
)
@click.option("--seed", default=3407, show_default=True)
@click.option("--no-mp4", is_flag=True, help="Skip all_clips.mp4.")
def demo(out, overwrite, clips, steps, guidance, student_steps, student_decoder, seed, no_mp4):
    """Reconstruct held-out simulated clips with the built-in model and its student, beside a ridge baseline.

    The model ships in the package (trained by `mindvideo train recipe demo`, CPU, minutes), with a few-step student
    distilled from it (4 LCM steps, one UNet pass per step; VAE decoder unless --student-decoder tiny). Writes
    side-by-side ground truth | teacher | student | ridge GIFs per clip, all_clips.gif/.mp4, metrics.json (n-way
    semantic accuracy, SSIM, PSNR, seconds per clip) and pred.npy/student.npy/gt.npy for `mindvideo eval`; prints
    the scores.

    \b
    Example:
      mindvideo demo
      mindvideo demo --out demo/ --clips 8 --steps 10
      mindvideo demo --out demo-tiny/ --student-steps 2 --student-decoder tiny
      mindvideo demo --overwrite            # run again into mindvideo-demo/
    """
    from mindvideo.demo import run_demo, summary_table

    if student_steps < 1:
        raise MindVideoError("expected --student-steps ≥ 1", str(student_steps), "pass a positive number, e.g. 4")
    metrics = run_demo(
        out,
        clips=clips,
        steps=steps,
        guidance=guidance,
        seed=seed,
        student_steps=student_steps,
        student_decoder=student_decoder,
        mp4=not no_mp4,
        overwrite=overwrite,
    )
    s, st = metrics["settings"], metrics["settings"]["student"]
    click.echo(
        f"mindvideo demo: {s['clips']} held-out clips, guidance {s['guidance']}; teacher: {s['steps']} DDIM steps "
        f"(2 UNet passes each); student: {st['steps']} LCM steps (1 pass each), {st['decoder']} decoder"
    )
    for line in summary_table(metrics):  # with the ground truth's scores: the classifier's ceiling
        click.echo("  " + line)
    click.echo(f"  seconds {metrics['seconds']}; written to {out} (clips/, all_clips.gif, metrics.json)")


COMMANDS: list[click.Command] = [generate, info, init, demo]
