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
    "--decoder",
    type=click.Choice(["vae", "tiny"]),
    default="vae",
    show_default=True,
    help="Decoder of the end-to-end rows: the VAE's, or the checkpoint's tiny_decoder/ (a random one for the random "
    "checkpoint); recorded in the JSON.",
)
@click.option(
    "--out",
    "--json",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Result JSON [default: e2e-cpu.json or e2e-gpu-<device>.json in the current folder].",
)
def bench(gpu, checkpoint, frames, steps, repeats, threads, decoder, out):
    """Time every backend side by side, per stage, with UNet evaluations per clip (2·steps for a guided teacher,
    steps for a distilled student); print a short table and write the full results JSON (per-repeat times,
    stages, device, commit, command, date) to --out.

    \b
    Examples:
      mindvideo bench                      # CPU: pytorch pipeline vs torch / onnxruntime + C loop
      mindvideo bench --checkpoint CKPT --decoder tiny   # the same, decoding with CKPT/tiny_decoder
      mindvideo bench --gpu --out h200.json
                                           # H100/H200: eager fp32, fp16+SDPA, bf16 loop, CUDA graph
    """
    from mindvideo.benchmarks import e2e

    argv = ["--repeats", str(repeats), "--threads", str(threads), "--decoder", decoder]
    for flag, value in (("--checkpoint", checkpoint), ("--frames", frames), ("--steps", steps), ("--out", out)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--gpu"] if gpu else []
    result = e2e.run(e2e.parse_args(argv), ["benchmarks/e2e.py", *argv])
    path = out or Path.cwd() / e2e.result_name(gpu)
    e2e.write_result(result, path)
    click.echo(e2e.format_table(result))
    click.echo(f"wrote {path}")
