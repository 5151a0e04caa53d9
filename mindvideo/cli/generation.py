"""The steps behind ``mindvideo generate`` (the click command in :mod:`mindvideo.cli.core` only calls them in turn):

1. :func:`check_options` — option combinations, before anything is read;
2. :func:`resolve_request` — the inputs (``--fmri`` / ``--data``; ``--scan`` waits for the model's data transform),
   an explicit or the split's negative, the ground truth and labels for ``--eval``, the generation settings;
3. :func:`load_model` — the PyTorch pipeline or an engine :class:`~mindvideo.engine.runtime.Runtime`;
4. :func:`finish_request` — the settings the model decides (a student's scheduler, steps, g; no negative), the scan's
   windows, and which negative condition the guidance uses (:func:`describe_negative`);
5. :func:`write_and_score` — the videos, a ``<out>.json`` sidecar with the settings, then the optional scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.pipeline import GenerationConfig
from mindvideo.sampling import sampling_defaults

log = logging.getLogger(__name__)

EXPORT_BACKENDS = ("onnxruntime", "tensorrt")  # their precision was fixed by `mindvideo export`
EXPORT_DEVICES = {"onnxruntime": ("cpu", "cuda", "cuda:0"), "tensorrt": ("cuda", "cuda:0")}


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """``mindvideo generate``'s options as parsed; ``given`` names those passed on the command line."""

    out: Path
    checkpoint: Path | None = None
    fmri_path: Path | None = None
    scan: Path | None = None
    trs: str = ":"
    data: Path | None = None
    split: str = "test"
    max_clips: int | None = None
    batch_size: int | None = None
    eval_out: Path | None = None
    classifier: Path | None = None
    video_classifier: Path | None = None
    clip_model: Path | None = None
    labels: Path | None = None
    negative_fmri: Path | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    decoder: str = "vae"
    seed: int = 3407
    dtype: str = "fp32"
    device: str = "cpu"
    fps: float | None = None
    backend: str = "pytorch"
    engine: Path | None = None
    loop: str = "auto"
    overwrite: bool = False
    ray: str | None = None  # --ray: "local" (a cluster started on 127.0.0.1) or a running cluster's address
    ray_workers: int | None = None
    ray_cpus_per_worker: float = 1.0
    ray_gpus_per_worker: float | None = None
    ray_work: Path | None = None
    sweep: tuple[str, ...] = ()  # --sweep KEY=V1,V2,... (guidance, steps, seed), with --ray
    given: frozenset[str] = frozenset()


@dataclasses.dataclass
class GenerateRequest:
    """What to generate, resolved from the options (and, after :func:`finish_request`, from the model)."""

    fmri: np.ndarray | None  # (N, W, V) windows; None for --scan until the model's data transform reads them
    trs: tuple[int, int | None]  # --scan's window range
    negative: np.ndarray | None  # an explicit (--negative-fmri) or the split's negative window(s)
    negative_path: Path | None  # ... read from this file
    truth: np.ndarray | None  # --eval: the split's stimulus video (N, F, H, W, 3) uint8
    labels: np.ndarray | None  # --eval --labels: one class per clip
    cfg: GenerationConfig
    batch_size: int  # windows per model call (0 = all at once)
    negative_note: dict[str, Any] = dataclasses.field(default_factory=dict)  # set by finish_request


def parse_range(text: str) -> tuple[int, int | None]:
    """``"START:END"`` (either side may be empty) → (start, end or None)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start or 0), int(end) if end else None
    except ValueError:
        raise MindVideoError("expected --trs as START:END, e.g. 10:14 or :", repr(text), "fix the range") from None


# --------------------------------------------------------------------------------------------------- 1. options


def check_options(opts: GenerateOptions) -> None:
    """Option combinations that cannot work or would be silently ignored, refused before anything is read."""
    from mindvideo.media import check_video_path

    check_video_path(opts.out)
    if sum(x is not None for x in (opts.fmri_path, opts.scan, opts.data)) != 1:
        raise MindVideoError("expected exactly one of --fmri, --scan or --data", "none or several", "pass one input")
    if opts.data is None and (opts.eval_out is not None or opts.max_clips is not None or "split" in opts.given):
        named = [f for f, v in (("--eval", opts.eval_out), ("--max-clips", opts.max_clips)) if v is not None]
        named += ["--split"] if "split" in opts.given else []
        raise MindVideoError(
            f"expected --data with {' / '.join(named)}", "no --data", "pass a prepared dataset, or drop them"
        )
    extras = {
        "--classifier": opts.classifier,
        "--video-classifier": opts.video_classifier,
        "--clip": opts.clip_model,
        "--labels": opts.labels,
    }
    if opts.eval_out is None and any(v is not None for v in extras.values()):
        named = ", ".join(k for k, v in extras.items() if v is not None)
        raise MindVideoError("expected --eval REPORT with the evaluation options", named, "add --eval report/")
    if opts.overwrite and opts.eval_out is None:
        raise MindVideoError("expected --eval REPORT with --overwrite", "no --eval", "drop --overwrite")
    # before any generation: a refused report folder must not cost the run (a sweep's, one per setting, are
    # checked by mindvideo.cluster before its job starts)
    if opts.eval_out is not None and not opts.sweep:
        from mindvideo.eval.report import COMMAND as REPORT_COMMAND
        from mindvideo.fsutil import check_output_folder

        check_output_folder(opts.eval_out, REPORT_COMMAND, overwrite=opts.overwrite)
    if opts.scan is None and "trs" in opts.given:
        raise MindVideoError(
            "expected --scan with --trs (the TR range of a raw run)",
            f"--trs {opts.trs} without --scan",
            "drop --trs, or pass the run with --scan",
        )
    if opts.backend == "pytorch" and opts.loop != "auto":
        raise MindVideoError(
            "expected an engine backend (torch, onnxruntime, tensorrt) with --loop",
            "--backend pytorch",
            "add --backend torch",
        )
    check_engine_settings(opts.backend, opts.engine, opts.dtype, opts.device, opts.given)
    check_ray_options(opts)


def check_ray_options(opts: GenerateOptions) -> None:
    """``--ray`` reconstructs a prepared split (``--data``); its companions and ``--sweep`` need it."""
    companions = {
        "ray_workers": "--ray-workers",
        "ray_cpus_per_worker": "--ray-cpus-per-worker",
        "ray_gpus_per_worker": "--ray-gpus-per-worker",
        "ray_work": "--ray-work",
        "sweep": "--sweep",
    }
    if opts.ray is None:
        named = [flag for name, flag in companions.items() if name in opts.given]
        if named:
            raise MindVideoError(
                f"expected --ray with {' / '.join(named)}", "no --ray", "add --ray (a local cluster) or --ray ADDRESS"
            )
        return
    if opts.data is None:
        raise MindVideoError(
            "expected --data with --ray (the windows of a prepared split are cut into shards)",
            "--fmri or --scan",
            "pass a prepared dataset with --data, or drop --ray",
        )


def given_options(names) -> frozenset[str]:
    """The options among ``names`` that the running click command got from the command line (or the environment),
    not from their defaults."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return frozenset(name for name in names if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT)


def check_engine_settings(backend: str, engine: Path | None, dtype: str, device: str, given: frozenset[str]) -> None:
    """An export's backend (onnxruntime, TensorRT) runs the precision ``mindvideo export`` fixed, on its own device:
    an explicit ``--dtype`` or ``--device`` it cannot honour is refused instead of being ignored."""
    if backend not in EXPORT_BACKENDS:
        return
    devices = EXPORT_DEVICES[backend]
    if "device" in given and device not in devices:
        raise MindVideoError(
            f"expected --device among {list(devices)} with --backend {backend}",
            f"--device {device}",
            "drop --device (pick the GPU with CUDA_VISIBLE_DEVICES), or use --backend torch",
        )
    if "dtype" in given and engine is not None:
        precision = export_precision(engine, backend)
        if precision is not None and precision != dtype:
            raise MindVideoError(
                f"expected --dtype to be the precision of the export in {engine} ({precision}) with --backend "
                f"{backend}: mindvideo export fixed it",
                f"--dtype {dtype}",
                f"drop --dtype, or re-export with --precision {dtype}",
            )


def export_precision(engine: Path, backend: str) -> str | None:
    """The encoder/UNet precision of an export folder: the ONNX graphs' (onnxruntime) or the UNet engine's
    (TensorRT; ``None`` before one is built)."""
    from mindvideo.export import read_manifest

    manifest = read_manifest(engine)
    if backend == "tensorrt":
        return manifest.get("engines", {}).get("unet", {}).get("precision")
    return manifest.get("settings", {}).get("precision")


# --------------------------------------------------------------------------------------------------- 2. inputs


def resolve_request(opts: GenerateOptions) -> GenerateRequest:
    """The windows, negative, ground truth and settings of ``opts`` (raw ``--scan`` runs are read later)."""
    from mindvideo.media import read_fmri_array

    trs = parse_range(opts.trs)
    fmri = None if opts.fmri_path is None else read_fmri_array(opts.fmri_path)
    if fmri is not None and fmri.ndim == 3 and fmri.shape[0] == 0:
        raise MindVideoError(
            f"expected at least one fMRI window in {opts.fmri_path}", "shape (0, …)", "check the file"
        )
    truth, negative_path = None, opts.negative_fmri
    frames, height, width = opts.frames, opts.height, opts.width
    if opts.data is not None:
        fmri, truth, split_negative = prepared_split(opts.data, opts.split, opts.max_clips, opts.eval_out is not None)
        negative_path = negative_path or split_negative
        if truth is not None:
            frames, height, width = frames or truth.shape[1], height or truth.shape[2], width or truth.shape[3]
    negative = None if negative_path is None else read_fmri_array(negative_path)
    labels = eval_labels(opts, truth)
    cfg = GenerationConfig(
        num_frames=frames or 6,
        height=height,
        width=width,
        num_inference_steps=opts.steps,
        guidance_scale=opts.guidance,
        scheduler=opts.scheduler,
        seed=opts.seed,
        decoder=opts.decoder,
    )
    if truth is not None:
        check_matches_truth(cfg, truth)
    batch_size = opts.batch_size if opts.batch_size is not None else 8 if opts.data is not None else 0
    return GenerateRequest(fmri, trs, negative, negative_path, truth, labels, cfg, batch_size)


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


def eval_labels(opts: GenerateOptions, truth: np.ndarray | None) -> np.ndarray | None:
    """With ``--eval``: the model folders checked up front, and ``--labels`` read (``None`` without)."""
    if opts.eval_out is None:
        return None
    from mindvideo.eval.evaluate import check_model_folders

    folders = {"frame_classifier": opts.classifier, "video_classifier": opts.video_classifier, "clip": opts.clip_model}
    check_model_folders(folders)
    if opts.labels is None:
        return None
    return _labels(opts.labels, len(truth), split_length(opts.data, opts.split))


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


def check_matches_truth(cfg: GenerationConfig, gt: np.ndarray) -> None:
    if (cfg.num_frames, cfg.height, cfg.width) != gt.shape[1:4]:
        raise MindVideoError(
            f"expected clips shaped like the ground truth (frames, height, width) = {gt.shape[1:4]} to evaluate",
            f"{(cfg.num_frames, cfg.height, cfg.width)} from --frames/--height/--width",
            "leave --frames/--height/--width unset with --eval, or prepare the data at the model's size",
        )


# --------------------------------------------------------------------------------------------------- 3. model


def load_model(opts: GenerateOptions):
    """The reference-exact PyTorch pipeline (``--backend pytorch``) or an engine runtime on ``opts.backend``."""
    if opts.backend == "pytorch":
        from mindvideo.pipeline import MindVideoPipeline

        if opts.checkpoint is None:
            raise MindVideoError("expected --checkpoint for the pytorch backend", "none", "pass the checkpoint folder")
        return MindVideoPipeline.from_pretrained(opts.checkpoint, dtype=opts.dtype, device=opts.device)
    from mindvideo.engine.runtime import load_runtime

    return load_runtime(
        opts.backend,
        checkpoint=opts.checkpoint,
        engine=opts.engine,
        device=opts.device,
        dtype=opts.dtype,
        loop=opts.loop,
    )


def finish_request(model, request: GenerateRequest, opts: GenerateOptions) -> GenerateRequest:
    """The settings left unset follow the model (a distilled student names its schedulers and g range; its negative
    was fixed at distillation), a raw scan becomes windows, and the negative condition is named."""
    from mindvideo.pipeline import scan_windows

    facts = getattr(model, "unet_facts", None) or model.unet.config
    scheduler, steps, guidance = sampling_defaults(facts, opts.scheduler, opts.steps, opts.guidance)
    cfg = dataclasses.replace(request.cfg, scheduler=scheduler, num_inference_steps=steps, guidance_scale=guidance)
    negative, negative_path = request.negative, request.negative_path
    if facts.guidance_embedding:
        if negative is not None and opts.negative_fmri is not None:
            log.warning("a distilled student ignores --negative-fmri (its negative was fixed at distillation)")
        negative, negative_path = None, None
    fmri = request.fmri if opts.scan is None else scan_windows(model.transform, opts.scan, *request.trs)
    request = dataclasses.replace(request, fmri=fmri, cfg=cfg, negative=negative, negative_path=negative_path)
    request.negative_note = describe_negative(model, request, opts, student=bool(facts.guidance_embedding))
    return request


def describe_negative(model, request: GenerateRequest, opts: GenerateOptions, student: bool) -> dict[str, Any]:
    """Which negative condition the guidance uses: ``{"source", "path", "text"}`` (``source``: none, file, split,
    data_transform or input_mean), mirroring the pipeline's and the runtime's own default."""
    if student:
        return {"source": "none", "path": None, "text": "none (a distilled student: fixed at distillation)"}
    if request.cfg.guidance_scale <= 1.0:
        return {"source": "none", "path": None, "text": "none (guidance 1: no negative pass)"}
    if request.negative_path is not None:
        source = "file" if opts.negative_fmri is not None else "split"
        what = "--negative-fmri" if source == "file" else "the prepared split's negative_fmri.npy"
        return {"source": source, "path": str(request.negative_path), "text": f"{what} ({request.negative_path})"}
    if getattr(model, "transform", None) is not None:
        path = Path(opts.checkpoint) / "data_transform"
        return {"source": "data_transform", "path": str(path), "text": f"the mean training window of {path}"}
    size = request.batch_size or len(request.fmri)
    text = "the mean of the input windows"
    if size < len(request.fmri):
        text += f" of each call (--batch-size {size})"
    if opts.backend != "pytorch" and opts.checkpoint is None:
        text += "; without --checkpoint no data_transform/ is read (the pytorch backend uses its mean training window)"
    else:
        text += " (the checkpoint has no data_transform/)"
    return {"source": "input_mean", "path": None, "text": text}


# --------------------------------------------------------------------------------------------------- 4. output


def output_kind(out: Path) -> str:
    """What the model returns for ``out``: ``"float"`` (B, 3, F, H, W) for .npy, else ``"uint8"`` (B, F, H, W, 3)."""
    return "float" if Path(out).suffix == ".npy" else "uint8"


def write_and_score(model, request: GenerateRequest, opts: GenerateOptions) -> list[tuple[str, str]]:
    """Generate, write the videos and ``<out>.json``, then (``--eval``) score them; the table's rows."""
    start = time.perf_counter()
    output = output_kind(opts.out)
    video = generate_batches(model, request.fmri, request.negative, request.cfg, request.batch_size, output)
    return write_results(video, time.perf_counter() - start, request, opts)


def write_results(
    video: np.ndarray, seconds: float, request: GenerateRequest, opts: GenerateOptions, extra: dict | None = None
) -> list[tuple[str, str]]:
    """Write the videos of one generation (however it ran) and ``<out>.json`` (plus ``extra`` records), then
    (``--eval``) score them; the table's rows."""
    from mindvideo.media import write_video, write_videos

    out = Path(opts.out)
    output = output_kind(out)
    rows = [("clips", str(video.shape[0])), ("shape", str(tuple(video.shape))), ("seconds", f"{seconds:.2f}")]
    # the reconstructions are written first: a failing evaluation must not throw away the generation
    if out.suffix == ".npy":
        paths = [write_video(out, video)]
    else:
        paths = write_videos(out, video, opts.fps or request.cfg.num_frames / 2.0)
    sidecar = write_sidecar(out, request, opts, video.shape, paths, seconds, extra)
    rows.append(("written", ", ".join(map(str, [*paths, sidecar]))))
    if request.truth is not None:
        from mindvideo.eval.evaluate import evaluate_videos
        from mindvideo.eval.report import summary_rows

        clips = video if output == "uint8" else np.round(video.transpose(0, 2, 3, 4, 1) * 255).astype(np.uint8)
        metrics = evaluate_videos(
            clips, request.truth, opts.eval_out, classifier=opts.classifier, video_classifier=opts.video_classifier,
            clip=opts.clip_model, device=opts.device, labels=request.labels,
            sources={"pred": str(out), "gt": str(opts.data)}, report_options={"overwrite": opts.overwrite},
        )  # fmt: skip
        rows += [*summary_rows(metrics), ("report", str(opts.eval_out))]
    return rows


def generate_batches(model, fmri: np.ndarray, negative, cfg, batch_size: int, output: str) -> np.ndarray:
    """Every window in batches of ``batch_size`` (0 = one call); each call draws its noise from ``cfg.seed``. A
    negative with one window per input is cut like the inputs."""
    parts = [
        model(fmri[start:end], batch_negative(negative, len(fmri), start, end), cfg, output=output)
        for start, end in batch_ranges(len(fmri), batch_size)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def batch_ranges(windows: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, end) windows of each model call: ``batch_size`` at a time (0 = all in one call). A window's noise
    is row ``start - batch start`` of the call's draw from the seed, so these ranges fix every window's noise."""
    size = batch_size or windows
    return [(start, min(start + size, windows)) for start in range(0, windows, size)]


def batch_negative(negative, windows: int, start: int, end: int):
    """The negative of the call over windows ``start:end``: cut like the inputs when it has one window per input."""
    per_window = negative is not None and np.ndim(negative) == 3 and len(negative) == windows > 1
    return negative[start:end] if per_window else negative


def sidecar_path(out: Path) -> Path:
    """``clip.mp4`` → ``clip.mp4.json``: the settings a generation ran with."""
    return out.with_name(out.name + ".json")


def write_sidecar(
    out: Path, request: GenerateRequest, opts: GenerateOptions, shape, paths, seconds: float, extra: dict | None = None
) -> Path:
    """``<out>.json`` (written whole): inputs, model, sampling settings, the negative condition, the files (and
    ``extra``, e.g. how a Ray job ran)."""
    from mindvideo import __version__
    from mindvideo.media import atomic_path

    frames, height, width = shape[2:] if Path(out).suffix == ".npy" else shape[1:4]  # (B,3,F,H,W) / (B,F,H,W,3)
    cfg = dataclasses.replace(request.cfg, num_frames=frames, height=height, width=width)  # the sizes that ran
    inputs = {"fmri": opts.fmri_path, "scan": opts.scan, "data": opts.data}
    record = {
        "command": "generate",
        "mindvideo": __version__,
        "input": {k: str(v) for k, v in inputs.items() if v is not None},
        "windows": len(request.fmri),
        "model": {"backend": opts.backend, "checkpoint": opts.checkpoint, "engine": opts.engine},
        "settings": {**dataclasses.asdict(cfg), "batch_size": request.batch_size, **run_precision(opts)},
        "negative_condition": request.negative_note,
        "shape": list(shape),
        "files": [str(p) for p in paths],
        "seconds": round(seconds, 3),
    }
    if opts.scan is not None:
        record["input"]["trs"] = opts.trs
    if opts.data is not None:
        record["input"]["split"] = opts.split
    record.update(extra or {})
    record["model"] = {k: None if v is None else str(v) for k, v in record["model"].items()}
    path = sidecar_path(out)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def run_precision(opts: GenerateOptions) -> dict[str, str | None]:
    """The dtype and device the networks ran with: the options', or an export's precision (and TensorRT's GPU)."""
    if opts.backend not in EXPORT_BACKENDS:
        return {"dtype": opts.dtype, "device": opts.device}
    device = opts.device if opts.backend == "onnxruntime" else "cuda"
    return {"dtype": export_precision(opts.engine, opts.backend), "device": device}
