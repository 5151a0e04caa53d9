"""Raw layout → a prepared dataset folder (the ``mindvideo data prepare`` command).

Output (written to a temporary sibling and renamed, so a failure leaves no folder)::

    OUT/summary.json             counts, voxels kept, reproducibility stats, every config used
    OUT/data_transform/          the fitted FMRITransform (copy it to CKPT/data_transform/)
    OUT/reproducibility.npz      per raw voxel: mean Fisher z, t, bad and selected masks (when repeats exist)
    OUT/{train,test}/fmri.npy           (N, W, V_model) float32 windows
    OUT/{train,test}/video.npy          (N, F, H, W, 3) uint8 frames of each window's stimulus TR
    OUT/{train,test}/index.npy          (N, 2) int32: segment number, stimulus TR
    OUT/{train,test}/negative_fmri.npy  (W, V_model) float32 mean window of the split (the reference's negative)
    OUT/{train,test}/meta.json          segment names, optional per-window captions

Arrays are ``.npy`` rather than one safetensors/npz file so that they are written and read memory-mapped: the Wen
training video alone is ~5 GB. The ``hcp`` layout writes ``OUT/train/runs/NNNNN.npy`` (T, V_model) instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import Config
from mindvideo.data import preprocess as pp
from mindvideo.data.io import CIFTI_SUFFIX, Grayordinates, LoadConfig, VoxelMask, load_mask, progress_bar, suffix_of
from mindvideo.data.layouts import LAYOUTS, RunSource, Segment, hcp_runs, layout_segments, read_dataset_json
from mindvideo.data.transform import FMRITransform
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder, check_output_folder

log = logging.getLogger(__name__)

LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "arrays": {"detrend_order": -1, "zscore": False, "select": "all"},  # already cleaned and averaged
    "hcp": {"select": "all"},  # no stimulus, no repeats
}


@dataclasses.dataclass
class PrepareConfig(Config):
    """What to read and how to sample the stimulus."""

    layout: str = "wen"
    subject: str = "1"
    fmri_format: str = "cifti"  # wen: cifti | nifti
    events: str = "events.tsv"  # custom: the onset table, relative to --src
    pattern: str = "**/*.dtseries.nii"  # hcp: run files under --src
    fps: float = 3.0  # stimulus frames sampled per second (3 Hz × 2 s = 6 frames per TR)
    size: int = 256  # frames centre-cropped and resized to size × size
    video: bool = True  # write video.npy
    bin_trs: int = 1  # hcp: average non-overlapping blocks of this many volumes


def resolve_loading(src: Path, config: PrepareConfig, **overrides: Any) -> LoadConfig:
    """Loading options: defaults ← ``SRC/dataset.json`` ← explicit ``overrides`` (``None`` / empty ignored).

    A mask from dataset.json is ignored where no NIfTI is read (CIFTI Wen runs, the arrays layout).
    """
    values = read_dataset_json(src, config.subject) if src.is_dir() else {}
    if config.layout == "arrays" or (config.layout == "wen" and config.fmri_format == "cifti"):
        values = {k: v for k, v in values.items() if k not in ("mask", "atlas", "labels")}
    values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    if values.get("labels") is not None and isinstance(values["labels"], str):
        values["labels"] = tuple(x.strip() for x in values["labels"].split(",") if x.strip())
    return LoadConfig.from_dict(values)


def preprocess_defaults(layout: str, **overrides: Any) -> pp.PreprocessConfig:
    """The preprocessing config of a layout (``None`` overrides are ignored)."""
    values = {**LAYOUT_DEFAULTS.get(layout, {}), **{k: v for k, v in overrides.items() if v is not None}}
    config = pp.PreprocessConfig.from_dict(values)
    config.validate()
    return config


@dataclasses.dataclass
class CleanSegment:
    """A segment after stages 1–4: ``fmri`` (count + extra, V_raw) cleaned and repeat-averaged."""

    segment: Segment
    fmri: np.ndarray
    count: int  # stimulus TRs that have their lagged fMRI frame
    reliability: np.ndarray | None  # (V_raw,) mean Fisher z between repeats
    bad: np.ndarray  # (V_raw,)


# --------------------------------------------------------------------------------------------------- stages 1–4


def clean_segment(
    segment: Segment, loading: LoadConfig, mask: VoxelMask | None, cfg: pp.PreprocessConfig
) -> CleanSegment:
    """Trim, flag bad voxels, clean each repeat, then measure reproducibility and average the repeats."""
    n_stim = cfg.n_volumes or segment.n_trs
    runs, bad = [], None
    for source in segment.runs:
        run = _trimmed(source, loading, mask, cfg, n_stim, segment.name)
        if runs and run.shape[1] != runs[0].shape[1]:
            raise MindVideoError(
                f"expected the same voxel count in every run of {segment.name}",
                f"{runs[0].shape[1]} and {run.shape[1]}",
                "load every run with the same mask",
            )
        flags = pp.bad_voxel_mask(run)
        bad = flags if bad is None else bad | flags
        runs.append(run)
    length = min(r.shape[0] for r in runs)  # repeats may differ in how many lag frames they have
    cleaned = np.stack([pp.clean_run(r[:length], cfg) for r in runs])  # (R, T, V)
    if cfg.bad_voxels == "error" and bad.any():
        raise MindVideoError(
            f"expected no NaN/constant voxels in {segment.name}",
            f"{int(bad.sum())} such voxels, e.g. {np.flatnonzero(bad)[:5].tolist()}",
            "fix the mask, or pass --bad-voxels drop to drop them",
        )
    reliability = pp.repeat_reliability(cleaned) if len(cleaned) > 1 else None
    count = min(n_stim, length - cfg.lag)
    if count < n_stim:
        log.info("%s: %d of %d stimulus TRs have fMRI at lag %d", segment.name, count, n_stim, cfg.lag)
    if count < 1 or length < cfg.window_size:
        raise MindVideoError(
            f"expected at least {max(cfg.window_size, cfg.lag + 1)} fMRI volumes per run of "
            f"{segment.name} (window {cfg.window_size}, lag {cfg.lag})",
            f"{length} after trimming to the stimulus",
            "use longer runs, or a smaller --window / --lag",
        )
    return CleanSegment(segment, pp.average_repeats(cleaned), count, reliability, bad)


def _trimmed(source: RunSource, loading, mask, cfg: pp.PreprocessConfig, n_stim: int, name: str) -> np.ndarray:
    run = source.read(loading, mask).data
    start = cfg.trim_start + source.offset
    where = f"run {source.path or name}"
    pp.trim(run, start, n_stim, where)  # raises when the run is shorter than the stimulus
    extra = min(cfg.lag, run.shape[0] - start - n_stim)  # fMRI after the stimulus serves the lagged last TRs
    return np.asarray(run[start : start + n_stim + extra], dtype=np.float32)


def clean_all(segments: list[Segment], loading, mask, cfg, progress: bool, split: str) -> list[CleanSegment]:
    chosen = [s for s in segments if s.split == split]
    if split == "train" and not chosen:
        raise MindVideoError("expected at least one training segment", "none", "check the layout / split column")
    with progress_bar(chosen, f"{split} fMRI", progress) as bar:
        out = [clean_segment(s, loading, mask, cfg) for s in bar]
    sizes = {c.fmri.shape[1] for c in out}
    if len(sizes) > 1:
        raise MindVideoError(
            "expected the same voxel count in every run",
            f"{sorted(sizes)}",
            "load every run with the same mask / CIFTI selection",
        )
    return out


# --------------------------------------------------------------------------------------------------- the command

COMMAND = "data prepare"


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    config: PrepareConfig | None = None,
    preprocess: pp.PreprocessConfig | None = None,
    loading: LoadConfig | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare ``src`` (a layout of ``config.layout``) into ``out``; returns the summary written to summary.json.

    ``out`` must be new or empty, or (with ``overwrite``) an earlier ``mindvideo data prepare`` output
    (:func:`mindvideo.fsutil.check_output_folder`)."""
    src, config = Path(src), config or PrepareConfig()
    loading, preprocess = loading or LoadConfig(), preprocess or preprocess_defaults(config.layout)
    preprocess.validate()
    if config.layout not in LAYOUTS:
        raise MindVideoError(f"expected --layout one of {LAYOUTS}", repr(config.layout), "fix --layout")
    if not src.is_dir():
        raise MindVideoError(f"expected a dataset folder at {src}", "no such folder", "check --src")
    check_output_folder(out, COMMAND, overwrite=overwrite)
    mask = load_mask(loading.mask, loading.atlas, loading.labels) if (loading.mask or loading.atlas) else None
    with atomic_folder(out, COMMAND, overwrite=overwrite) as tmp:
        if config.layout == "hcp":
            summary = _prepare_hcp(src, tmp, config, preprocess, loading, mask, progress)
        else:
            summary = _prepare_stimulus(src, tmp, config, preprocess, loading, mask, progress)
        summary.update(source=str(src), layout=config.layout, prepare=config.to_dict())
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _prepare_stimulus(src, tmp: Path, config, preprocess, loading, mask, progress) -> dict[str, Any]:
    segments = layout_segments(
        config.layout, src, subject=config.subject, fmri_format=config.fmri_format, events=config.events, tr=loading.tr
    )
    # 1–4. clean the training segments, 5–6. fit the transform on them
    train = clean_all(segments, loading, mask, preprocess, progress, "train")
    bad = np.logical_or.reduce([c.bad for c in train])
    if bad.any():
        log.warning("dropping %d of %d voxels that are NaN or constant in some training run", bad.sum(), bad.size)
    z = [c.reliability for c in train if c.reliability is not None]
    reliability = np.stack(z) if z else None
    transform = FMRITransform.fit([c.fmri for c in train], reliability, bad, preprocess, loading, mask)
    transform.grayordinates = cifti_grayordinates([r.path for s in segments for r in s.runs], loading)
    transform.save(tmp / "data_transform")
    _save_reproducibility(tmp, reliability, bad, transform)
    # 7–8. project, window and write both splits
    test = clean_all(segments, loading, mask, preprocess, progress, "test")
    counts = {
        split: write_split(tmp / split, items, transform, config, loading.tr, progress)
        for split, items in (("train", train), ("test", test))
        if items
    }
    return {
        "counts": counts,
        "segments": {split: sum(s.split == split for s in segments) for split in ("train", "test")},
        "repeats": {s.split: len(s.runs) for s in segments},
        "voxels": {
            "raw": transform.n_raw,
            "bad": int(bad.sum()),
            "selected": len(transform.keep),
            "model": transform.num_voxels,
        },
        "reproducibility": _reproducibility_stats(reliability, transform),
        "window_size": preprocess.window_size,
        "lag": preprocess.lag,
        "tr": loading.tr,
        "preprocess": preprocess.to_dict(),
        "loading": loading.to_dict(),
    }


def write_split(
    folder: Path, items: list[CleanSegment], transform: FMRITransform, config: PrepareConfig, tr: float, progress: bool
) -> int:
    """Windows, frames, index, captions and the split's negative fMRI of every segment of one split."""
    folder.mkdir(parents=True)
    total, window, voxels = sum(c.count for c in items), transform.window_size, transform.num_voxels
    fmri = np.lib.format.open_memmap(folder / "fmri.npy", mode="w+", dtype=np.float32, shape=(total, window, voxels))
    index, video, captions, row = np.zeros((total, 2), np.int32), None, [], 0
    with progress_bar(items, f"write {folder.name}", progress) as bar:
        for number, item in enumerate(bar):
            rows = slice(row, row + item.count)
            fmri[rows] = transform.windows(transform.project(item.fmri), count=item.count)
            index[rows, 0], index[rows, 1] = number, np.arange(item.count)
            if config.video and item.segment.video is not None:
                frames = item.segment.video.read(item.count, tr=tr, fps=config.fps, size=config.size)
                if video is None:
                    video = np.lib.format.open_memmap(
                        folder / "video.npy", mode="w+", dtype=np.uint8, shape=(total, *frames.shape[1:])
                    )
                video[rows] = frames
            captions.extend(_segment_captions(item))
            row += item.count
    np.save(folder / "index.npy", index)
    np.save(folder / "negative_fmri.npy", fmri.mean(axis=0, dtype=np.float64).astype(np.float32))
    fmri.flush()
    meta = {"segments": [c.segment.name for c in items], "captions": captions if any(captions) else None}
    (folder / "meta.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
    del fmri, video
    return total


def _segment_captions(item: CleanSegment) -> list[str]:
    captions = item.segment.captions
    if captions is None:
        return [""] * item.count
    if len(captions) < item.count:
        raise MindVideoError(
            f"expected {item.count} captions (one per TR) for {item.segment.name}",
            f"{len(captions)}",
            "write one caption line per TR",
        )
    return list(captions[: item.count])


def _save_reproducibility(tmp: Path, reliability: np.ndarray | None, bad: np.ndarray, transform) -> None:
    selected = np.zeros(bad.size, dtype=bool)
    selected[transform.keep] = True
    arrays = {"bad": bad, "selected": selected}
    if reliability is not None:
        arrays["mean_z"] = reliability.mean(axis=0).astype(np.float32)
        if len(reliability) > 1:
            arrays["t"] = pp.reproducibility_ttest(reliability)[0].astype(np.float32)
    np.savez(tmp / "reproducibility.npz", **arrays)


def _reproducibility_stats(reliability: np.ndarray | None, transform: FMRITransform) -> dict[str, Any]:
    stats: dict[str, Any] = dict(transform.info.get("selection", {}))
    if reliability is not None:
        mean_z = reliability.mean(axis=0)
        stats.update(
            segments=len(reliability),
            mean_z_all=float(mean_z.mean()),
            mean_z_selected=float(mean_z[transform.keep].mean()),
        )
    return stats


def cifti_grayordinates(paths: list[Path | None], loading: LoadConfig) -> Grayordinates | None:
    """The selected grayordinates of the first CIFTI run among ``paths`` (None when no run is CIFTI)."""
    for path in paths:
        if path is not None and suffix_of(path) == CIFTI_SUFFIX:
            return Grayordinates.from_file(path, loading.cifti_select)
    return None


# --------------------------------------------------------------------------------------------------- hcp


def _prepare_hcp(src, tmp: Path, config, preprocess, loading, mask, progress) -> dict[str, Any]:
    """Two passes over the runs: (1) bad voxels + normalisation sums, (2) transform and write each run."""
    paths = hcp_runs(src, config.pattern)
    # 1. statistics pass (runs are never all in memory at once)
    bad, total, total_sq, frames = _hcp_statistics(paths, loading, mask, preprocess, config.bin_trs, progress)
    keep, stats = pp.select_voxels(None, ~bad, preprocess)
    mean, std = _pooled_stats(total, total_sq, frames, keep, preprocess.normalise)
    info = {"selection": stats, "n_bad": int(bad.sum()), "n_selected": len(keep)}
    transform = FMRITransform(loading, preprocess, int(bad.size), keep, mean, std, np.zeros(0, np.float32), mask, info)
    # 2. writing pass; the negative condition is the mean window over every run
    runs_dir = tmp / "train" / "runs"
    runs_dir.mkdir(parents=True)
    listing, window_sum, windows = [], 0.0, 0
    with progress_bar(paths, "hcp write", progress) as bar:
        for number, path in enumerate(bar):
            x = transform.project(_hcp_clean(path, loading, mask, preprocess, config.bin_trs))
            np.save(runs_dir / f"{number:05d}.npy", x)
            listing.append({"source": str(path.relative_to(src)), "frames": len(x)})
            w = transform.windows(x, lag=0)
            window_sum, windows = window_sum + w.sum(0, dtype=np.float64), windows + len(w)
    transform.negative = (window_sum / windows).astype(np.float32)
    transform.grayordinates = cifti_grayordinates(paths, loading)
    transform.save(tmp / "data_transform")
    (tmp / "train" / "runs.json").write_text(json.dumps(listing, indent=1) + "\n", encoding="utf-8")
    voxels = {"raw": int(bad.size), "bad": int(bad.sum()), "selected": len(keep), "model": transform.num_voxels}
    return {
        "counts": {"train": windows},
        "runs": len(paths),
        "frames": int(frames),
        "voxels": voxels,
        "window_size": preprocess.window_size,
        "tr": loading.tr * config.bin_trs,
        "preprocess": preprocess.to_dict(),
        "loading": loading.to_dict(),
    }


def _hcp_statistics(paths: list[Path], loading, mask, cfg, bin_trs: int, progress: bool) -> tuple:
    """(bad (V,), sum (V,), sum of squares (V,), frames) over every cleaned run."""
    bad, total, total_sq, frames = None, 0.0, 0.0, 0
    with progress_bar(paths, "hcp statistics", progress) as bar:
        for path in bar:
            run = _hcp_clean(path, loading, mask, cfg, bin_trs)
            flags = pp.bad_voxel_mask(run)
            if bad is not None and flags.size != bad.size:
                raise MindVideoError(
                    "expected the same voxel count in every run",
                    f"{bad.size} and {flags.size} ({path})",
                    "load every run with the same ROI / CIFTI selection",
                )
            bad = flags if bad is None else bad | flags
            total, total_sq = total + run.sum(0, dtype=np.float64), total_sq + (run.astype(np.float64) ** 2).sum(0)
            frames += len(run)
    return bad, total, total_sq, frames


def _hcp_clean(path: Path, loading, mask, cfg: pp.PreprocessConfig, bin_trs: int) -> np.ndarray:
    run = RunSource(path).read(loading, mask).data
    length = cfg.n_volumes or max(run.shape[0] - cfg.trim_start, 0)
    run = pp.clean_run(pp.trim(run, cfg.trim_start, length, str(path)), cfg)
    if bin_trs > 1:
        usable = (len(run) // bin_trs) * bin_trs
        run = run[:usable].reshape(-1, bin_trs, run.shape[1]).mean(axis=1)
    if len(run) < cfg.window_size:
        raise MindVideoError(
            f"expected at least {cfg.window_size} frames in {path}",
            f"{len(run)}",
            "drop the run or use a smaller --window",
        )
    return run


def _pooled_stats(total, total_sq, frames: int, keep: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "none":
        return np.zeros((), np.float32), np.ones((), np.float32)
    s, sq, n = total[keep], total_sq[keep], frames
    if mode == "scalar":
        s, sq, n = s.sum(), sq.sum(), frames * len(keep)
    mean = s / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return np.asarray(mean, np.float32), np.asarray(np.where(std > 1e-8, std, 1.0), np.float32)
