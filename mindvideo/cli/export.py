"""``mindvideo export``: checkpoint → verified ONNX graphs (+ TensorRT engines with ``--format trt``).

The command only wraps :func:`mindvideo.export.export_onnx` and :func:`mindvideo.export.build_engines`;
``mindvideo.cli._attach`` registers it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from mindvideo.errors import MindVideoError

ONNX_PRECISIONS = ("fp32", "fp16")
TRT_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


@click.command("export")
@click.option(
    "--checkpoint",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint folder (ours or the reference MinD-Video layout).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Export folder (new, empty, or a previous export: unchanged graphs are reused).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "trt"]),
    default="onnx",
    show_default=True,
    help='onnx: graphs only; trt: graphs, then TensorRT engines (needs pip install -e ".[gpu]" and a GPU).',
)
@click.option(
    "--precision",
    type=click.Choice(TRT_PRECISIONS),
    default="fp32",
    show_default=True,
    help="Encoder and UNet. ONNX: fp32 or fp16 graphs; trt: builder precision over fp32 graphs.",
)
@click.option(
    "--vae-precision",
    type=click.Choice(("fp32", "bf16", "fp16")),
    default="fp32",
    show_default=True,
    help="VAE decoder (and tiny decoder). fp16 decoders overflow to NaN on many inputs; bf16 is TensorRT-only.",
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17–20).")
@click.option(
    "--height",
    type=click.IntRange(min=1),
    default=None,
    help="Video height in pixels, a multiple of the VAE's factor f = 2^(len(block_out_channels) − 1) (8 for SD) "
    "[default: the UNet's sample_size × f].",
)
@click.option(
    "--width",
    type=click.IntRange(min=1),
    default=None,
    help="Video width in pixels, a multiple of f [default: the UNet's sample_size × f].",
)
@click.option("--batch", default="1:2:4", show_default=True, help="MIN:OPT:MAX rows per UNet call (guidance doubles).")
@click.option("--frames", default="1:8:16", show_default=True, help="MIN:OPT:MAX frames per clip.")
@click.option(
    "--decoder-frames", default=None, help="MIN:OPT:MAX frames per VAE call [default: 1:OPT:MAX of --frames]."
)
@click.option(
    "--rtol", type=float, default=None, help="Verification tolerance on max_rel [default: 5e-4 fp32, 3e-2 fp16]."
)
@click.option(
    "--attention",
    type=click.Choice(["onnx", "plugin"]),
    default="onnx",
    show_default=True,
    help="UNet sparse-causal attention: onnx = plain ops; plugin = one node per layer that TensorRT runs with our "
    "Triton kernel as an ahead-of-time plugin (onnxruntime runs the node's ONNX function).",
)
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime-vs-PyTorch check (not recommended).")
@click.option("--force", is_flag=True, help="Re-export (and rebuild) even when the cache says nothing changed.")
@click.option(
    "--exporter",
    type=click.Choice(["torchscript", "dynamo"]),
    default="torchscript",
    show_default=True,
    help="torch.onnx exporter; dynamo mis-exports the UNet's frame axis in torch 2.13.",
)
@click.option(
    "--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="TensorRT builder optimisation level."
)
@click.option("--workspace-gib", type=float, default=None, help="TensorRT builder workspace limit.")
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="TensorRT engine cache [default: OUT/engines]."
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the table as JSON."
)
def export(
    checkpoint: Path,
    out: Path,
    fmt: str,
    precision: str,
    vae_precision: str,
    opset: int,
    height: int | None,
    width: int | None,
    batch: str,
    frames: str,
    decoder_frames: str | None,
    rtol: float | None,
    attention: str,
    no_verify: bool,
    force: bool,
    exporter: str,
    opt_level: int,
    workspace_gib: float | None,
    cache_dir: Path | None,
    json_path: Path | None,
) -> None:
    """Export a checkpoint's fMRI encoder, video UNet and VAE decoder (and its tiny_decoder/, if it has one) to ONNX
    (and TensorRT engines).

    Every graph is checked with onnx.checker and compared with PyTorch under onnxruntime; the export fails above
    tolerance. OUT/manifest.json records hashes, shapes, errors and tool versions.

    \b
    Example:
      mindvideo export --checkpoint ckpt/ --out exported/ --format onnx --precision fp16
      mindvideo export --checkpoint ckpt/ --out exported/ --format trt --precision fp16 --vae-precision bf16
      mindvideo export --checkpoint ckpt/ --out exported/ --format trt --precision fp16 --attention plugin
    """
    from mindvideo.export.manifest import write_json_atomic
    from mindvideo.export.onnx import ExportSettings, export_onnx
    from mindvideo.export.spec import Axis, SpecOptions
    from mindvideo.fsutil import folder_lock

    onnx_precision, onnx_vae = _graph_precisions(fmt, precision, vae_precision)
    builds = _trt_preflight(fmt, precision, vae_precision, opt_level, workspace_gib) if fmt == "trt" else None
    if fmt == "trt" and attention == "plugin":
        from mindvideo.export.trt_plugin import require_plugin_tensorrt

        require_plugin_tensorrt()  # before the ONNX export: a too old or too new TensorRT is known now
    spec = SpecOptions(
        precision=onnx_precision,
        vae_precision=onnx_vae,
        height=height,
        width=width,
        batch=Axis.parse(batch, "batch"),
        frames=Axis.parse(frames, "frames"),
        decoder_frames=Axis.parse(decoder_frames, "decoder frames") if decoder_frames else None,
        attention=attention,
    )
    settings = ExportSettings(spec=spec, opset=opset, exporter=exporter, rtol=rtol, verify=not no_verify)
    with folder_lock(out, "export"):  # graphs and engines of one run, not interleaved with another export's
        result = export_onnx(checkpoint, out, settings, force=force, progress=_say)
        rows = [dataclasses.asdict(r) for r in result.networks]
        _print_onnx_table(result)
        if builds is not None:
            if "tiny_decoder" in result.manifest["networks"]:  # the tiny decoder's engine: the VAE decoder's build
                builds["tiny_decoder"] = builds["vae_decoder"]
            rows += _build_engines(out, builds, cache_dir, force)
    if json_path:
        write_json_atomic(json_path, {"out": str(out), "networks": rows})


def _graph_precisions(fmt: str, precision: str, vae_precision: str) -> tuple[str, str]:
    """ONNX graph precisions. TensorRT engines are built from fp32 graphs with precision builder flags: TensorRT then
    chooses per layer (weakly typed), and the reference attention's fp32 Cast islands, no-ops in an fp32 graph, do
    not pin attention to fp32 and block its fp16/bf16 fusion."""
    if fmt == "trt":
        return "fp32", "fp32"
    if precision not in ONNX_PRECISIONS:
        raise MindVideoError(
            "expected --precision fp32 or fp16 with --format onnx",
            precision,
            "tf32/bf16/fp8 are TensorRT precisions: use --format trt",
        )
    if vae_precision == "bf16":
        raise MindVideoError(
            "expected --vae-precision fp32 or fp16 with --format onnx",
            "bf16",
            "bf16 is a TensorRT precision: use --format trt",
        )
    return precision, vae_precision


def _trt_preflight(fmt: str, precision: str, vae_precision: str, opt_level: int, workspace_gib: float | None):
    """TensorRT present, a GPU visible, precisions supported: checked before anything is written."""
    from mindvideo.export.cache import BuildConfig
    from mindvideo.export.tensorrt import current_target

    target = current_target()
    main_build = BuildConfig(precision, opt_level, workspace_gib)
    builds = {
        "fmri_encoder": main_build,
        "unet": main_build,
        "vae_decoder": BuildConfig(vae_precision, opt_level, workspace_gib),
    }
    for build in builds.values():
        build.check(target)
    return builds


def _build_engines(out: Path, builds, cache_dir: Path | None, force: bool) -> list[dict]:
    """Engines from the fresh export; prints one line each and returns the JSON rows."""
    from mindvideo.export.tensorrt import build_engines

    engines = build_engines(out, builds, cache_dir=cache_dir, force=force, progress=_say)
    for e in engines:
        line = f"{e.network:<13} {e.status:<8} {e.precision:<5} {_size(e.bytes):>9} {e.seconds:6.1f} s  {e.plan}"
        click.echo(f"engine {line}")
    return [{**dataclasses.asdict(e), "plan": str(e.plan), "kind": "engine"} for e in engines]


def _say(message: str) -> None:
    click.echo(message, err=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_onnx_table(result) -> None:
    click.echo(
        f"{'network':<13} {'status':<8} {'prec':<5} {'size':>9} {'max_abs':>9} {'max_rel':>9} {'tol':>8} {'time':>8}"
    )
    for r in result.networks:
        err = (
            f"{r.max_abs:9.2e} {r.max_rel:9.2e} {r.tolerance:8.0e}"
            if r.max_rel is not None
            else f"{'-':>9} {'-':>9} {'-':>8}"
        )
        click.echo(f"{r.name:<13} {r.status:<8} {r.precision:<5} {_size(r.bytes):>9} {err} {r.seconds:6.1f} s")
    sha = result.manifest["checkpoint"]["sha256"][:16]
    if result.reused_all:
        click.echo(f"nothing re-exported: checkpoint {sha}… and settings unchanged (cache hit)")
    if result.written:
        click.echo(f"wrote {result.out / 'manifest.json'} (checkpoint sha256 {sha}…)")
