"""``mindvideo stream``: decode TRs live from a folder, a localhost TCP socket or stdin into files / streams.

Wraps :class:`mindvideo.engine.stream.StreamingDecoder` with :mod:`mindvideo.engine.sources` and
:mod:`mindvideo.engine.sinks` (their docstrings define the file naming and the TCP/stdin/stdout framings). Every
option is checked before the model loads; ports are bound and output files opened (as temporary files) before the
first TR is read; any user error exits with code 2 and leaves no output file. Once the scan runs, bad TRs are
reported and handled by ``--on-bad-tr``, SIGINT/SIGTERM/SIGHUP finish the scan (exit 0) and a fatal condition stops
it with every clip made so far written (exit 3); see :mod:`mindvideo.engine.stream_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from mindvideo.cli.core import GENERATE_BACKENDS
from mindvideo.cli.generation import check_engine_settings, given_options
from mindvideo.errors import MindVideoError
from mindvideo.sampling import SCHEDULERS

POLICY_CHOICES = ("drop-oldest", "skip-frames", "lower-steps", "block")  # mindvideo.engine.stream.POLICIES
ON_BAD_TR_CHOICES = ("hold", "skip", "stop")  # mindvideo.engine.stream.ON_BAD_TR
EXIT_STOPPED = 3  # the scan stopped on a fatal condition; the output written so far is valid


def _load_clean_stats(path: Path | None) -> tuple[Any, Any] | None:
    """``--clean-stats``: an .npz with per-raw-voxel ``mean`` and ``std`` (e.g. of a calibration run)."""
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["mean"], archive["std"]
    except (OSError, KeyError, ValueError) as exc:
        raise MindVideoError(
            f"expected an .npz with 'mean' and 'std' arrays at {path}",
            f"{type(exc).__name__}: {exc}",
            "save them with numpy.savez(path, mean=..., std=...) (see calibration_stats)",
        ) from None


def _decoder(pipe: Any, gen: Any, opts: dict[str, Any]) -> Any:
    """The StreamingDecoder for the CLI options (``gen``: a GenerationConfig)."""
    from mindvideo.engine.stream import OnlineCleanConfig, StreamingDecoder, pipeline_generator

    if pipe.transform is None and not opts["model_space"]:
        raise MindVideoError(
            f"expected a data_transform/ folder in {opts['checkpoint']} to read raw TRs",
            "none",
            "copy the prepared dataset's data_transform/ into the checkpoint, or send model-space vectors with "
            "--model-space",
        )
    stats = _load_clean_stats(opts["clean_stats"])
    clean = OnlineCleanConfig(
        mode="fixed" if stats is not None else opts["clean"],
        warmup=opts["warmup"],
        highpass_halflife=opts["highpass_trs"],
        stats_halflife=opts["stats_halflife_trs"],
    )
    return StreamingDecoder(
        pipeline_generator(pipe, gen, opts["warm_start_strength"] if opts["warm_start"] else None),
        pipe.transform,
        window_size=pipe.window_size,
        num_voxels=pipe.num_voxels,
        policy=opts["policy"],
        max_queue=opts["max_queue"],
        frames=gen.num_frames,
        steps=gen.num_inference_steps,
        min_frames=opts["min_frames"],
        min_steps=opts["min_steps"],
        tr=opts["tr"],
        clean=clean,
        clean_stats=stats,
        on_bad_tr=opts["on_bad_tr"],
    )


def _report(summary: dict[str, Any], sinks: list[str], seconds: float, to_stderr: bool) -> None:
    """A short table on stdout (stderr when stdout carries the clip stream)."""
    lat = summary["latency_s"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    rows = [
        ("TRs received", summary["trs_in"]),
        ("clips", f"{summary['processed']} of {summary['windows']} windows"),
        ("dropped", f"{summary['dropped']} {summary['dropped_trs'][:10] if summary['dropped'] else ''}".strip()),
        ("bad TRs", f"{summary['bad']} {_bad_list(summary)} ({summary['on_bad_tr']})".replace("  ", " ")),
        ("degraded", f"{summary['degraded']} (policy {summary['policy']}, {summary['policy_actions']} actions)"),
        ("warm-up clips", summary["cold"]),
        ("latency s", f"p50 {fmt(lat['p50'])}  p95 {fmt(lat['p95'])}  max {fmt(lat['max'])}"),
        *([("source events", _counters(summary["source"]))] if summary.get("source") else []),
        ("ended", summary.get("ended", "source")),
        ("seconds", f"{seconds:.1f}"),
        ("sinks", ", ".join(sinks)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}", err=to_stderr)


def _counters(events: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in events.items())


def _bad_list(summary: dict[str, Any]) -> str:
    """The first bad TR indices, as the report shows them."""
    indices = [b["index"] for b in summary["bad_trs"][:10]]
    return f"{indices}{'…' if summary['bad'] > 10 else ''}" if indices else ""


def _write_stats(path: Path | None, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    if path is None:
        return
    from mindvideo.media import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "trs": records}, indent=1) + "\n", encoding="utf-8")


@click.command("stream")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint folder.")
@click.option(
    "--source",
    required=True,
    help="folder:DIR | tcp:127.0.0.1:PORT | stdin (framing: see --help) | lsl:NAME (an LSL stream of type fMRI, one "
    "raw TR per sample, resolved within --connect-timeout; needs pip install -e '.[lsl]').",
)
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    required=True,
    help="file:OUT.mp4|OUT.gif | tcp:PORT | stdout | window | lsl:NAME[,classifier=DIR] (LSL outlets NAME-markers, "
    "NAME-embedding and, with a frame classifier, NAME-scores) | web:PORT (a live view in a browser at "
    "http://127.0.0.1:PORT/, printed when ready); repeat.",
)
@click.option("--frames", default=6, show_default=True, help="Frames per TR clip (nominal).")
@click.option("--steps", default=8, show_default=True, help="Denoising steps (nominal).")
@click.option("--guidance", default=12.5, show_default=True, help="Guidance scale (1 = none).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="ddim", show_default=True)
@click.option(
    "--decoder",
    type=click.Choice(["vae", "tiny"]),
    default="vae",
    show_default=True,
    help="vae, or the checkpoint's tiny_decoder/ (engine backends: the export's tiny_decoder graph or engine; see "
    "mindvideo generate --help).",
)
@click.option("--seed", default=3407, show_default=True)
@click.option("--height", type=int, help="Output height [default: the UNet's native size].")
@click.option("--width", type=int, help="Output width [default: the UNet's native size].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(GENERATE_BACKENDS),
    default="pytorch",
    show_default=True,
    help="pytorch: the reference-exact pipeline; the others run the engine (see mindvideo generate --help).",
)
@click.option("--engine", type=click.Path(path_type=Path), help="Export folder for --backend onnxruntime/tensorrt.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "c", "device", "graph"]),
    default="auto",
    show_default=True,
    help="Engine backends: the sampling loop (see mindvideo generate --help).",
)
@click.option("--threads", type=int, help="torch (and onnxruntime) CPU threads [default: the libraries'].")
@click.option("--policy", type=click.Choice(POLICY_CHOICES), default="drop-oldest", show_default=True)
@click.option("--max-queue", type=int, help="Windows waiting at most [default: 1 drop-oldest, 4, 8 block].")
@click.option("--min-frames", default=2, show_default=True, help="Floor for --policy skip-frames.")
@click.option("--min-steps", default=1, show_default=True, help="Floor for --policy lower-steps.")
@click.option("--tr", default=2.0, show_default=True, help="Seconds per TR: the cadence and the latency budget.")
@click.option("--max-trs", type=int, help="Stop after this many TRs [default: until the source ends].")
@click.option("--clean", type=click.Choice(["running", "none"]), default="running", show_default=True)
@click.option("--clean-stats", type=click.Path(path_type=Path), help=".npz of per-voxel mean/std: fixed cleaning.")
@click.option("--warmup", default=20, show_default=True, help="TRs whose clips are flagged warm-up.")
@click.option("--highpass-trs", default=32.0, show_default=True, help="High-pass half-life in TRs (0 = off).")
@click.option("--stats-halflife-trs", default=64.0, show_default=True, help="z-score half-life (0 = cumulative).")
@click.option("--model-space", is_flag=True, help="Sources send transformed (V_model,) vectors.")
@click.option("--idle-timeout", type=float, help="End the scan after this long without a TR [default: 10 TRs].")
@click.option(
    "--on-bad-tr",
    type=click.Choice(ON_BAD_TR_CHOICES),
    default="hold",
    show_default=True,
    help="A TR that is malformed, not finite, implausible or unreadable: hold (the last good TR stands in, the clip "
    "is marked), skip (no clip for the windows holding it) or stop (end the scan, exit 3). Always reported.",
)
@click.option(
    "--settle",
    default=0.0,
    show_default=True,
    help="Folder source: seconds a file's size must stay unchanged before it is read.",
)
@click.option(
    "--reconnect-timeout",
    default=10.0,
    show_default=True,
    help="TCP/LSL source: seconds to wait for the sender to come back after it went away.",
)
@click.option(
    "--connect-timeout", default=60.0, show_default=True, help="Seconds to wait for a TCP peer or for an LSL stream."
)
@click.option("--fps", type=float, help="Frame rate of file sinks [default: frames / TR].")
@click.option(
    "--warm-start",
    is_flag=True,
    help="pytorch backend: start each clip from the previous clip's final latents re-noised (windows overlap) "
    "instead of pure noise; runs fewer steps. The first clip starts from noise.",
)
@click.option(
    "--warm-start-strength",
    default=0.5,
    show_default=True,
    help="With --warm-start: s in (0, 1]; re-noise to timestep index floor((1 - s)·steps), run the rest.",
)
@click.option("--stats-json", type=click.Path(path_type=Path), help="Write the summary and per-TR latencies.")
def stream(**opts: Any) -> None:
    """Decode fMRI live: each TR from --source becomes a clip written to every --sink.

    Sources: a folder watched for per-TR files (3-D .nii/.nii.gz, one-row .dtseries.nii, .npy, DICOM with
    pydicom), a TCP socket on 127.0.0.1 or stdin; TCP/stdin frames are a 4-byte big-endian length then .npy bytes
    or raw float32. TCP/stdout clips are a 4-byte length, a JSON header, then uint8 RGB frames. Raw TRs are cleaned
    online (running high-pass + z-score) and projected with the checkpoint's data_transform/. When generation
    falls behind, --policy drops the oldest windows, skips frames or lowers steps, and says so. A bad TR
    (malformed, not finite, implausible, unreadable) is reported and handled by --on-bad-tr. SIGINT, SIGTERM and
    SIGHUP finish the scan with every clip written (exit 0); a fatal condition during the scan keeps every clip
    made so far and the stats (exit 3); exit 2: nothing written.

    \b
    Examples:
      mindvideo stream --checkpoint CKPT --source folder:/rt/export --sink file:live.mp4 --steps 8 --frames 6
      mindvideo stream --checkpoint CKPT --source tcp:127.0.0.1:5555 --sink tcp:5556 --policy lower-steps
      producer | mindvideo stream --checkpoint CKPT --source stdin --sink stdout --max-trs 300 | consumer
    """
    from mindvideo.engine.sinks import open_sinks, parse_sink
    from mindvideo.engine.sources import parse_source
    from mindvideo.engine.stream import StreamStopped, run_stream

    source_spec = parse_source(opts["source"])  # 1. every option first: a bad one loads nothing
    for spec in opts["sinks"]:
        parse_sink(spec)
    if opts["max_trs"] is not None and opts["max_trs"] < 1:
        raise MindVideoError("expected --max-trs ≥ 1", str(opts["max_trs"]), "raise it")
    _check_warm_start(opts)
    check_engine_settings(opts["backend"], opts["engine"], opts["dtype"], opts["device"], given_options(opts))
    with _stop_signals() as disarm:  # from here on a stop signal never leaves a temporary file behind
        pipe, gen = _pipeline(opts)  # 2. the model and the decoder
        decoder = _decoder(pipe, gen, opts)
        to_stderr = "stdout" in opts["sinks"]
        fps = opts["fps"] or gen.num_frames / opts["tr"]
        timeout = opts["connect_timeout"]
        sinks = open_sinks(
            list(opts["sinks"]),
            fps=fps,
            frames=gen.num_frames,
            connect_timeout_s=timeout,
            decoder=decoder,  # an lsl sink publishes each clip's fMRI embedding
            pipeline=pipe,
        )
        source = _start_scan(source_spec, opts, decoder, sinks)  # 3. the source, warm-up, then the scan
        start = time.monotonic()
        stopped = None
        try:
            summary = run_stream(decoder, source, sinks, model_space=opts["model_space"], on_scan_end=disarm)
        except StreamStopped as exc:
            if exc.summary is None:  # nothing was written
                raise
            summary, stopped = exc.summary, exc
        _write_stats(opts["stats_json"], summary, decoder.records())
        _report(summary, list(opts["sinks"]), time.monotonic() - start, to_stderr)
    if stopped is not None:
        click.echo(f"error: {stopped}", err=True)
        click.get_current_context().exit(EXIT_STOPPED)


@contextlib.contextmanager
def _stop_signals():
    """SIGINT/SIGTERM/SIGHUP: during the scan they finish it (exit 0); before it (model loading, warm-up) the sinks
    are removed and the command exits with 128 + the signal number, nothing written."""
    from mindvideo.engine.stream import Interrupted, stop_signals

    try:
        with stop_signals() as disarm:
            yield disarm
    except Interrupted as exc:
        click.echo(f"error: interrupted by {exc.signal} before the scan started; nothing written", err=True)
        click.get_current_context().exit(128 + int(getattr(signal, exc.signal)))


def _start_scan(source_spec: Any, opts: dict[str, Any], decoder: Any, sinks: list[Any]) -> Any:
    """Open the source (binds its port), warm the model up and say ``ready:``; on any error remove the sinks."""
    from mindvideo.engine.sources import open_source

    source = None
    transform = decoder.transform  # lsl: the stream must carry one TR of this many voxels per sample
    channels = None if transform is None else transform.num_voxels if opts["model_space"] else transform.n_raw
    wanted = {"settle_s": opts["settle"], "reconnect_timeout_s": opts["reconnect_timeout"], "channels": channels}
    accepted = inspect.signature(open_source).parameters
    extra = {key: value for key, value in wanted.items() if value is not None and key in accepted}
    try:
        source = open_source(
            source_spec,
            max_trs=opts["max_trs"],
            idle_timeout_s=opts["idle_timeout"] or 10 * opts["tr"],
            connect_timeout_s=opts["connect_timeout"],
            **extra,
        )
        decoder.warm_up()
        where = f"127.0.0.1:{source.port}" if getattr(source, "port", None) is not None else opts["source"]
        ports = "".join(f"; clips to 127.0.0.1:{sink.port}" for sink in sinks if hasattr(sink, "port"))
        ports += "".join(f"; live view at {sink.url}" for sink in sinks if hasattr(sink, "url"))
        click.echo(f"ready: reading TRs from {where}{ports}", err=True)
    except BaseException:
        for sink in sinks:
            sink.abort()
        if source is not None:
            source.close()
        raise
    return source


def _check_warm_start(opts: dict[str, Any]) -> None:
    if not 0.0 < opts["warm_start_strength"] <= 1.0:
        raise MindVideoError(
            "expected --warm-start-strength in (0, 1]", str(opts["warm_start_strength"]), "pass e.g. 0.5"
        )
    if opts["warm_start"] and opts["backend"] != "pytorch":
        raise MindVideoError(
            "expected --backend pytorch with --warm-start", f"--backend {opts['backend']}", "drop one of them"
        )


def _pipeline(opts: dict[str, Any]) -> tuple[Any, Any]:
    """The pipeline and the checked GenerationConfig."""
    import torch

    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if opts["backend"] == "pytorch" and opts["loop"] != "auto":
        raise MindVideoError(
            "expected an engine backend (torch, onnxruntime, tensorrt) with --loop",
            "--backend pytorch",
            "add --backend",
        )
    if opts["backend"] == "pytorch":
        pipe = MindVideoPipeline.from_pretrained(opts["checkpoint"], dtype=opts["dtype"], device=opts["device"])
    else:
        from mindvideo.engine.runtime import load_runtime

        pipe = load_runtime(
            opts["backend"],
            checkpoint=opts["checkpoint"],
            engine=opts["engine"],
            device=opts["device"],
            dtype=opts["dtype"],
            loop=opts["loop"],
            threads=opts["threads"],
        )
    gen = GenerationConfig(
        num_frames=opts["frames"],
        height=opts["height"],
        width=opts["width"],
        num_inference_steps=opts["steps"],
        guidance_scale=opts["guidance"],
        scheduler=opts["scheduler"],
        seed=opts["seed"],
        decoder=opts["decoder"],
    )
    pipe.check_generation(gen)
    if opts["policy"] == "skip-frames":  # the policy may go down to --min-frames: that must run too
        pipe.check_generation(dataclasses.replace(gen, num_frames=min(opts["min_frames"], gen.num_frames)))
    return pipe, gen
