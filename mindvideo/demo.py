"""The built-in demo: reconstruct held-out simulated clips with the model that ships in the package.

``mindvideo demo`` wraps :func:`run_demo`. The model in ``mindvideo/assets/demo/checkpoint`` was trained by the
small-data recipe (``mindvideo train recipe demo``; command, seed and versions in ``recipe.json`` beside it) on
simulated fMRI of procedural clips from 10 semantic classes. On the held-out test windows the demo

1. reconstructs each clip from its fMRI window with the teacher (DDIM, adversarial guidance with the mean training
   window) and with the few-step student distilled from it (``assets/student``: 4 LCM steps, one UNet pass per step,
   the VAE decoder by default), timing each;
2. fits the baseline — ridge regression (scikit-learn) from the same training fMRI to 8×8 frames — and predicts
   the same windows;
3. scores both with the evaluation protocol (:mod:`mindvideo.eval`): n-way top-1 semantic accuracy at frame and
   video level with the known clip classes as the true classes (chance 1/n) and a pixel classifier trained on the
   training frames, plus SSIM and PSNR;
4. writes side-by-side ground truth | teacher | student | ridge GIFs (a header strip names the columns) and an MP4 of
   all clips, ``metrics.json``, ``pred.npy`` / ``gt.npy`` / ``labels.npy`` (for ``mindvideo eval``).

:func:`export_assets` packages a recipe run as those assets (after :func:`mindvideo.train.recipe.calibrate` has
fitted the classifier and chosen the guidance scale on the first test segment, which the demo never scores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder, check_output_folder
from mindvideo.pipeline import GenerationConfig

log = logging.getLogger(__name__)

N_WAYS = (2, 5, 10)
BASELINE_SIZE = 8  # the ridge decoder predicts 8×8 frames, upsampled for scoring (a common pixel baseline)
DISPLAY_SCALE = 4  # GIF/MP4 frames are enlarged (nearest neighbour) so 32-pixel clips are visible
COLUMN_LABELS = ("truth", "teacher", "student", "ridge")  # the header strip over the GIF/MP4 columns
HEADER_HEIGHT = 16  # pixels of that strip, at display scale
GRID_PAD = 2  # pixels between clips in a grid, before enlarging
COMMAND = "demo"
STUDENT_STEPS = 4  # LCM steps of the demo's student
STUDENT_SCHEDULER = "lcm"
ASSETS_COMMAND = "train recipe --export-assets"


def default_assets() -> Path:
    """``mindvideo/assets/demo`` of the installed package."""
    return Path(str(resources.files("mindvideo") / "assets" / "demo"))


def _require(assets: Path) -> dict[str, Any]:
    needed = ["checkpoint", "student", "test_set.npz", "baseline_train.npz", "classifier", "recipe.json"]
    missing = [name for name in needed if not (assets / name).exists()]
    if missing:
        raise MindVideoError(
            f"expected the demo assets ({', '.join(needed)}) in {assets}",
            f"{missing} missing",
            "reinstall mindvideo, or rebuild them: mindvideo train recipe demo --out runs/demo --export-assets DIR",
        )
    return json.loads((assets / "recipe.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------- the demo


def run_demo(
    out: str | Path,
    *,
    assets: str | Path | None = None,
    clips: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 3407,
    student_steps: int = STUDENT_STEPS,
    student_decoder: str = "vae",
    mp4: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Reconstruct the held-out clips, score them against the ridge baseline, write everything to ``out``.

    ``steps`` / ``guidance`` default to the recipe's recorded demo settings (the teacher's; the student runs
    ``student_steps`` LCM steps at the same g, decoding with ``student_decoder``); ``clips`` limits the test clips.
    ``out`` must be new or empty, or (with ``overwrite``) an earlier demo output. Returns the metrics written to
    ``out/metrics.json``."""
    tic = time.perf_counter()
    check_output_folder(out, COMMAND, overwrite=overwrite)
    assets = Path(assets) if assets is not None else default_assets()
    record = _require(assets)
    settings = record.get("demo", {})
    steps = steps or int(settings.get("steps", 25))
    guidance = guidance if guidance is not None else float(settings.get("guidance", 3.0))
    test = load_test_set(assets, clips)
    # 1. reconstructions and the baseline
    config = GenerationConfig(
        num_frames=int(test["video"].shape[1]), num_inference_steps=steps, guidance_scale=guidance, seed=seed
    )
    seconds: dict[str, float | None] = {"ground_truth": None}
    start = time.perf_counter()
    recon = reconstruct(assets / "checkpoint", test["fmri"], config, progress=progress)
    seconds["reconstruction"] = (time.perf_counter() - start) / len(recon)
    student_config = dataclasses.replace(
        config, num_inference_steps=student_steps, scheduler=STUDENT_SCHEDULER, decoder=student_decoder
    )
    start = time.perf_counter()
    student = student_pipeline(assets)(test["fmri"], None, student_config, progress=progress)
    seconds["student"] = (time.perf_counter() - start) / len(student)
    start = time.perf_counter()
    ridge = ridge_baseline(assets / "baseline_train.npz", test["fmri"], test["video"].shape[1:4])
    seconds["ridge"] = (time.perf_counter() - start) / len(ridge)  # fit and predict
    # 2. scores
    metrics = score(recon, ridge, test, assets / "classifier", student=student)
    for name, value in seconds.items():
        metrics[name]["seconds_per_clip"] = None if value is None else round(value, 4)
    metrics["settings"] = {
        "clips": len(recon),
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "scheduler": "ddim",
        "negative": "mean training window",
        "assets": str(assets),
        "student": {
            "steps": student_steps,
            "scheduler": STUDENT_SCHEDULER,
            "guidance": guidance,
            "decoder": student_decoder,
        },
    }
    # 3. files
    with atomic_folder(out, COMMAND, overwrite=overwrite) as tmp:
        write_outputs(tmp, test, recon, ridge, mp4=mp4, student=student)
        metrics["seconds"] = round(time.perf_counter() - tic, 1)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def load_test_set(assets: Path, clips: int | None = None) -> dict[str, np.ndarray]:
    """The held-out windows: ``fmri`` (N, W, V), ``video`` (N, F, H, W, 3), ``labels``, ``captions``, ``index``."""
    test = dict(np.load(assets / "test_set.npz", allow_pickle=False))
    if clips is None:
        return test
    if clips < 1:
        raise MindVideoError("expected --clips ≥ 1", str(clips), "pass a positive number")
    return {k: v[:clips] for k, v in test.items()}


def reconstruct(checkpoint: Path, fmri: np.ndarray, config: GenerationConfig, progress: bool = True) -> np.ndarray:
    """(N, W, V) windows → (N, F, H, W, 3) uint8 clips with the checkpoint's pipeline (negative: the fitted
    transform's mean training window)."""
    from mindvideo.data import FMRITransform
    from mindvideo.pipeline import MindVideoPipeline

    pipe = MindVideoPipeline.from_pretrained(checkpoint)
    negative = FMRITransform.load(checkpoint / "data_transform").negative_fmri
    return pipe(fmri, negative, config, progress=progress)


def student_pipeline(assets: Path):
    """The demo's student: the teacher checkpoint's encoder, VAE, scheduler and data transform with the distilled
    UNet of ``assets/student/unet`` (the tiny decoder, ``checkpoint/tiny_decoder``, is read on first use)."""
    from mindvideo.checkpoint import load_components, load_unet
    from mindvideo.data import FMRITransform
    from mindvideo.pipeline import MindVideoPipeline

    parts = load_components(assets / "checkpoint")
    transform = FMRITransform.load(assets / "checkpoint" / "data_transform")
    unet = load_unet(assets / "student" / "unet")
    pipe = MindVideoPipeline(parts["fmri_encoder"], unet, parts["vae"], parts["scheduler_config"], transform)
    pipe.checkpoint = assets / "checkpoint"
    return pipe


def student_checkpoint(assets: Path, dest: Path) -> Path:
    """A complete checkpoint folder of the demo's student in ``dest`` (new): the teacher's folders with
    ``student/unet`` as its UNet — for the commands that take ``--checkpoint`` (generate, export, bench)."""
    shutil.copytree(assets / "checkpoint", dest, ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(assets / "student" / "unet", dest / "unet")
    return dest


def ridge_baseline(path: Path, fmri: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Ridge regression (alpha by leave-one-out CV) from flattened windows to 8×8 frames, trained on the demo's
    training windows, predicted for ``fmri`` and upsampled (bilinear) to ``shape`` = (F, H, W)."""
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import RidgeCV

    train = np.load(path, allow_pickle=False)
    x, y = train["fmri"].reshape(len(train["fmri"]), -1), train["frames"]  # y: (M, F, 8, 8, 3) uint8
    model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(x, y.reshape(len(y), -1).astype(np.float32) / 255.0)
    pred = model.predict(fmri.reshape(len(fmri), -1)).reshape(-1, *y.shape[2:])  # (N·F, 8, 8, 3)
    up = F.interpolate(torch.from_numpy(pred).permute(0, 3, 1, 2).float(), size=shape[1:], mode="bilinear")
    video = (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    log.info("ridge baseline: alpha %.3g", model.alpha_)
    return video.reshape(len(fmri), *shape, 3)


def score(
    recon: np.ndarray,
    ridge: np.ndarray,
    test: dict[str, np.ndarray],
    classifier: Path,
    student: np.ndarray | None = None,
) -> dict[str, Any]:
    """The evaluation protocol for every decoder (``reconstruction``: the teacher; ``student`` when given); n-way with
    the known class of each clip (chance 1/n)."""
    from mindvideo.eval import FrameAveragedVideoClassifier, PixelClassifier, evaluate

    clf = PixelClassifier.load(classifier)
    n_ways = tuple(n for n in N_WAYS if n <= clf.num_classes)
    options = {
        "frame_classifier": clf,
        "video_classifier": FrameAveragedVideoClassifier(clf),
        "labels": test["labels"].astype(np.int64),
        "n_ways": n_ways,
        "progress": False,
    }
    out: dict[str, Any] = {"n_ways": list(n_ways), "chance": {str(n): 1.0 / n for n in n_ways}}
    decoders = {"reconstruction": recon, "student": student, "ridge": ridge, "ground_truth": test["video"]}
    for name, pred in ((k, v) for k, v in decoders.items() if v is not None):
        m = evaluate(pred, test["video"], **options)
        out[name] = {
            "frame_nway": {k: v["mean"] for k, v in m["frame_nway"].items()},
            "video_nway": {k: v["mean"] for k, v in m["video_nway"].items()},
            "ssim_colour": m["ssim_colour"]["mean"],
            "psnr": m["psnr"]["mean"],
        }
    return out


def write_outputs(
    folder: Path,
    test: dict[str, np.ndarray],
    recon: np.ndarray,
    ridge: np.ndarray,
    mp4: bool,
    student: np.ndarray | None = None,
) -> None:
    """Per clip ``clips/clip_NNN.gif`` (ground truth | teacher | student | ridge), ``all_clips.gif`` / ``.mp4``
    (every clip, one row each), ``pred.npy`` (the teacher's), ``student.npy``, ``gt.npy``, ``ridge.npy``,
    ``labels.npy``. Without ``student`` the columns are ground truth | reconstruction | ridge."""
    from mindvideo.media import write_video
    from mindvideo.train.tracking import video_grid

    fps = recon.shape[1] / 2.0  # the frames of one 2-s TR
    columns = [test["video"], recon, ridge] if student is None else [test["video"], recon, student, ridge]
    labels = COLUMN_LABELS if student is not None else ("truth", "reconstruction", "ridge")
    rows = [list(row) for row in zip(*columns)]
    (folder / "clips").mkdir()
    for i, row in enumerate(rows):
        clip = label_columns(_enlarge(video_grid([row], GRID_PAD)), labels)
        write_video(folder / "clips" / f"clip_{i:03d}.gif", clip, fps=fps)
    grid = label_columns(_enlarge(video_grid(rows, GRID_PAD)), labels)
    write_video(folder / "all_clips.gif", grid, fps=fps)
    if mp4:
        write_video(folder / "all_clips.mp4", grid, fps=fps)
    np.save(folder / "pred.npy", recon)
    np.save(folder / "gt.npy", test["video"])
    np.save(folder / "ridge.npy", ridge)
    if student is not None:
        np.save(folder / "student.npy", student)
    np.save(folder / "labels.npy", test["labels"])


def _enlarge(video: np.ndarray, factor: int = DISPLAY_SCALE) -> np.ndarray:
    return video.repeat(factor, axis=1).repeat(factor, axis=2)


def label_columns(video: np.ndarray, labels: tuple[str, ...], pad: int = GRID_PAD * DISPLAY_SCALE) -> np.ndarray:
    """``video`` ``(F, H, W, 3)``, a grid of ``len(labels)`` equal columns separated by ``pad``-pixel gutters, under
    a white ``HEADER_HEIGHT``-pixel strip with each column's label centred over it (PIL's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    frames, _, width, _ = video.shape
    try:
        font = ImageFont.load_default(size=12)
    except (TypeError, OSError):  # an older Pillow, or one without FreeType: the built-in bitmap font
        font = ImageFont.load_default()
    strip = Image.new("RGB", (width, HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    cell = (width - pad) / len(labels)  # one clip and the gutter after it
    for j, text in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = pad + j * cell + (cell - pad) / 2 - (right - left) / 2 - left  # centred over column j
        draw.text((x, (HEADER_HEIGHT - (bottom - top)) / 2 - top), text, "black", font)
    header = np.broadcast_to(np.asarray(strip, np.uint8), (frames, HEADER_HEIGHT, width, 3))
    return np.concatenate([header, video], axis=1)


SUMMARY_HEADER = ("metric", "teacher", "student", "ridge", "ground truth (upper bound)", "chance")
SUMMARY_DECODERS = ("reconstruction", "student", "ridge", "ground_truth")  # the metrics.json entries, in that order


def summary_table(metrics: dict[str, Any]) -> list[str]:
    """The CLI table: :data:`SUMMARY_HEADER` and one aligned line per metric, with the ground-truth clips scored the
    same way (``metrics["ground_truth"]``: what a perfect reconstruction would get, the classifier's ceiling)."""
    rows = [SUMMARY_HEADER, *_summary(metrics)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_HEADER))]
    return ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() for row in rows]


def _summary(metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    """(metric, teacher, student, ridge, ground truth, chance) rows (the ground truth's PSNR is the cap and its
    time nothing: "–"), the last one seconds per clip."""
    decoders = SUMMARY_DECODERS
    rows = []
    for level in ("video_nway", "frame_nway"):
        for n in metrics["n_ways"]:
            name = f"{level.split('_')[0]} {n}-way top-1"
            values = [f"{metrics[k][level][str(n)]:.3f}" for k in decoders]
            rows.append((name, *values, f"{metrics['chance'][str(n)]:.3f}"))
    for key, label in (("ssim_colour", "SSIM (colour)"), ("psnr", "PSNR (dB)")):
        values = ["–" if (k, key) == ("ground_truth", "psnr") else f"{metrics[k][key]:.3f}" for k in decoders]
        rows.append((label, *values, "–"))
    times = [metrics[k].get("seconds_per_clip") for k in decoders]
    rows.append(("seconds per clip", *("–" if t is None else f"{t:.3f}" for t in times), "–"))
    return rows


# --------------------------------------------------------------------------------------------------- packaging


def export_assets(recipe_out: str | Path, dest: str | Path) -> Path:
    """Package a finished recipe run as demo assets in ``dest``: the checkpoint (weights stored in float16), the
    test windows of every test segment but the validation one (clip, class, caption), the training windows with 8×8
    frames for the ridge baseline, the recipe's evaluation classifier and ``recipe.json`` (the record plus a file
    manifest). ``dest`` must be new, empty or earlier demo assets (replaced); other folders are refused."""
    from mindvideo.train.data import load_split

    root = Path(recipe_out)
    record_path = root / "recipe.json"
    if not record_path.is_file() or "calibration" not in json.loads(record_path.read_text(encoding="utf-8")):
        raise MindVideoError(f"expected a finished recipe run at {root}", "no recipe.json", "run the recipe first")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    labels = json.loads((root / "sim" / "truth" / "labels.json").read_text(encoding="utf-8"))
    train, test = load_split(root / "prepared", "train", video=True), load_split(root / "prepared", "test", video=True)
    check_assets_folder(dest)
    with atomic_folder(dest, ASSETS_COMMAND, overwrite=True, recognise=_is_assets) as tmp:
        shutil.copytree(root / "cotrain" / "model", tmp / "checkpoint")
        _store_half(tmp / "checkpoint")
        record["student"] = _export_student(root, tmp)
        shutil.copytree(root / "classifier", tmp / "classifier")
        _write_test_set(tmp / "test_set.npz", test, labels)
        _write_baseline_set(tmp / "baseline_train.npz", train, labels)
        record["demo"] = {
            "frames": int(test.video.shape[1]),
            "steps": int(record["recipe"]["sampling_steps"]),
            "guidance": float(record["calibration"]["guidance"]),
            "test_set": "every window of the test segments after the first (the first chose the guidance scale)",
        }
        record["model"] = {"recipe": "mindvideo train recipe demo", "checkpoint": "checkpoint/"}
        record["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(dest)


def _export_student(root: Path, tmp: Path) -> dict[str, Any]:
    """The recipe's consistency student's UNet as ``student/unet`` (the rest of it is the teacher's) and, when the run
    has one (``root/tiny-decoder``, ``mindvideo train tiny-decoder``), its tiny decoder as
    ``checkpoint/tiny_decoder``; both in float16."""
    unet = root / "distill-consistency" / "model" / "unet"
    if not unet.is_dir():
        raise MindVideoError(f"expected the recipe's student at {unet}", "no such folder", "run the recipe to the end")
    shutil.copytree(unet, tmp / "student" / "unet")
    _store_half(tmp / "student", ("unet",))
    tiny = root / "tiny-decoder" / "model" / "tiny_decoder"
    if tiny.is_dir():
        shutil.copytree(tiny, tmp / "checkpoint" / "tiny_decoder")
        _store_half(tmp / "checkpoint", ("tiny_decoder",))
    return {"unet": "student/unet", "from": str(unet), "tiny_decoder": str(tiny) if tiny.is_dir() else None}


def check_assets_folder(dest: str | Path) -> None:
    """Refuse ``dest`` for :func:`export_assets` unless it is new, empty or earlier demo assets."""
    check_output_folder(dest, ASSETS_COMMAND, overwrite=True, recognise=_is_assets)


def _is_assets(folder: Path) -> bool:
    """Demo assets written before output markers existed: a ``recipe.json`` with the demo settings and file list."""
    try:
        record = json.loads((folder / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "demo" in record and isinstance(record.get("files"), dict)


def _store_half(checkpoint: Path, names: tuple[str, ...] = ("fmri_encoder", "unet", "vae")) -> None:
    """Network weights stored as float16 (half the download; the pipeline loads them into float32 networks), with
    their ``weights.sha256`` rewritten to match."""
    from safetensors.torch import load_file, save_file

    from mindvideo.weights import write_checksums

    for name in names:
        for path in (checkpoint / name).glob("*.safetensors"):
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
            save_file(tensors, str(path), metadata={"format": "pt"})
        write_checksums(checkpoint / name)


def clip_labels(split, labels: dict[str, list[int]]) -> np.ndarray:
    """The simulated class of every window's stimulus TR ``(N,)``; ``labels``: ``truth/labels.json``."""
    return np.asarray([labels[split.segments[s]][t] for s, t in split.index], dtype=np.int64)


def validation_windows(split) -> np.ndarray:
    """Indices of the windows of the first test segment: the recipe's validation data."""
    return np.flatnonzero(split.index[:, 0] == split.index[0, 0])


def _write_test_set(path: Path, test, labels: dict[str, list[int]]) -> None:
    """Every window of the test segments after the first (held out from training and from calibration)."""
    index = np.setdiff1d(np.arange(len(test)), validation_windows(test))
    np.savez_compressed(
        path,
        fmri=np.asarray(test.fmri[index], np.float32),
        video=np.asarray(test.video[index]),
        labels=clip_labels(test, labels)[index],
        captions=np.asarray([test.captions[i] for i in index] if test.captions else [""] * len(index)),
        index=np.asarray(test.index[index]),
    )


def _write_baseline_set(path: Path, train, labels: dict[str, list[int]]) -> None:
    import torch
    import torch.nn.functional as F

    n, f, h, w, _ = train.video.shape
    x = torch.from_numpy(np.array(train.video).reshape(n * f, h, w, 3)).permute(0, 3, 1, 2).float()
    small = F.adaptive_avg_pool2d(x, BASELINE_SIZE).round().to(torch.uint8).permute(0, 2, 3, 1)
    frames = small.reshape(n, f, BASELINE_SIZE, BASELINE_SIZE, 3).numpy()
    np.savez_compressed(
        path, fmri=np.asarray(train.fmri, np.float32), frames=frames, labels=clip_labels(train, labels)
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
