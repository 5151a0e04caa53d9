"""``mindvideo bench``: the end-to-end benchmark (``benchmarks/e2e.py``) from the command line."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--gpu", is_flag=True, help="SD-1.5-sized model, 60 frames, 25 steps on CUDA (the real-time target).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="CPU mode: checkpoint [default: tiny random].")
@click.option("--frames", type=int, help="Frames per clip [default: 6 CPU, 60 GPU].")
@click.option("--steps", type=int, help="Denoising steps [default: 10 CPU, 25 GPU].")
@click.option("--repeats", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True, help="CPU mode: intra-op threads.")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Result JSON [default: benchmarks/results/e2e-<device>.json]."
)
def bench(gpu, checkpoint, frames, steps, repeats, threads, out):
    """Time every backend side by side, per stage, with UNet evaluations per clip (2·steps for a guided teacher,
    steps for a distilled student), and write a results JSON (device, commit, command, date).

    \b
    Examples:
      mindvideo bench                      # CPU: pytorch pipeline vs torch / onnxruntime + C loop
      mindvideo bench --gpu                # H100/H200: eager fp32, fp16+SDPA, bf16 loop, CUDA graph
    """
    from mindvideo.benchmarks import e2e

    args = ["--repeats", str(repeats), "--threads", str(threads)]
    for flag, value in (("--checkpoint", checkpoint), ("--frames", frames), ("--steps", steps), ("--out", out)):
        if value is not None:
            args += [flag, str(value)]
    e2e.main(args + (["--gpu"] if gpu else []))
