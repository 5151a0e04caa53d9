"""Reading evaluation inputs: clips as ``(N, F, H, W, 3)`` uint8, clip names, and scene ids.

Inputs are either one ``.npy`` array ``(N, F, H, W, 3)`` uint8, one video file (a single clip), a folder of per-clip
files (``.npy`` ``(F, H, W, 3)``, ``.gif``, ``.mp4`` and other formats PyAV reads) or a glob pattern selecting such
files (``"demo/clip_*.gif"``), ordered by natural sort of their names (``test2`` before ``test10``). Prediction and
ground-truth clips are paired in that order.

Scene handling follows the reference (``remove_overlap``): each test clip has a scene id, and a clip whose window
crosses a scene cut carries an id with a ``-`` (e.g. ``"12-13"``); such clips can be dropped, and optionally only the
first clip of each scene kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".npy", ".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm")


def natural_key(name: str) -> list[object]:
    """Sort key treating digit runs as numbers: ``test2`` < ``test10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_clip(path: str | Path) -> np.ndarray:
    """One clip file → ``(F, H, W, 3)`` uint8 (alpha dropped, grey expanded to RGB)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            clip = np.load(path, allow_pickle=False)
        else:
            import imageio.v3 as iio

            clip = iio.imread(path, index=None, **({} if path.suffix == ".gif" else {"plugin": "pyav"}))
    except Exception as exc:  # unreadable / truncated / wrong codec: the user's file to fix
        raise MindVideoError(
            f"expected a readable clip at {path}", f"{type(exc).__name__}: {exc}", "re-export it as .npy, .gif or .mp4"
        ) from None
    if clip.ndim == 3:  # (F, H, W) grey
        clip = np.repeat(clip[..., None], 3, axis=-1)
    if clip.ndim != 4 or clip.shape[-1] not in (3, 4) or clip.dtype != np.uint8:
        raise MindVideoError(
            f"expected {path} to hold (F, H, W, 3) uint8 frames",
            f"{clip.dtype} {clip.shape}",
            "save clips as uint8 RGB",
        )
    return clip[..., :3]


def clip_files(folder: Path) -> list[Path]:
    """The clip files of a folder, naturally sorted."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    if not files:
        raise MindVideoError(
            f"expected clip files ({', '.join(VIDEO_SUFFIXES)}) in {folder}",
            "none",
            "point at the folder holding the clips",
        )
    return sorted(files, key=lambda p: natural_key(p.name))


def load_videos(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Clips ``(N, F, H, W, 3)`` uint8 and their names from a ``.npy`` array, one video file, a folder or a glob."""
    path = Path(path)
    if not path.exists() and any(c in str(path) for c in "*?["):
        return _stack_clips(_glob(path), str(path))
    if not path.exists():
        raise MindVideoError(f"expected clips at {path}", "no such file or folder", "check --pred / --gt")
    if path.is_file() and path.suffix == ".npy":
        try:
            videos = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise MindVideoError(
                f"expected a readable .npy array at {path}", f"{type(exc).__name__}: {exc}", "save it with np.save"
            ) from None
        if videos.ndim == 4:  # a single clip
            videos = videos[None]
        return np.asarray(videos), [f"{path.stem}[{i}]" for i in range(len(videos))]
    return _stack_clips([path] if path.is_file() else clip_files(path), str(path))


def _glob(pattern: Path) -> list[Path]:
    """Files matching a glob pattern (the last path parts may hold ``*``, ``?``, ``[…]``), naturally sorted."""
    anchor = Path(pattern.anchor or ".")
    relative = pattern.relative_to(anchor) if pattern.is_absolute() else pattern
    files = [p for p in anchor.glob(str(relative)) if p.is_file()]
    if not files:
        raise MindVideoError(f"expected clip files matching {pattern}", "none", "check the pattern")
    return sorted(files, key=lambda p: natural_key(p.name))


def _stack_clips(files: list[Path], source: str) -> tuple[np.ndarray, list[str]]:
    clips = [read_clip(f) for f in files]
    shapes = sorted({c.shape for c in clips})
    if len(shapes) > 1:
        raise MindVideoError(
            f"expected every clip in {source} to have the same (F, H, W, 3) shape",
            f"{shapes[:4]}",
            "export all clips with the same frame count and size",
        )
    return np.stack(clips), [f.stem for f in files]


def load_pair(pred_path: str | Path, gt_path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reconstructions and ground truth, paired in sorted-name order; names are the ground truth's."""
    pred, pred_names = load_videos(pred_path)
    gt, gt_names = load_videos(gt_path)
    if len(pred) != len(gt):
        raise MindVideoError(
            "expected as many reconstructed clips as ground-truth clips",
            f"{len(pred)} in {pred_path} vs {len(gt)} in {gt_path}",
            "evaluate matching sets",
        )
    differing = sum(p != g for p, g in zip(pred_names, gt_names))
    if differing and Path(pred_path).is_dir() and Path(gt_path).is_dir():
        log.info("%d of %d clip names differ between pred and gt; pairing by sorted order", differing, len(gt))
    return pred, gt, gt_names


# --------------------------------------------------------------------------------------------------- scenes


def load_scene_ids(path: str | Path, n_clips: int) -> list[str]:
    """One scene id per clip from a ``.npy`` array (any shape, e.g. the reference's ``test_seg_id_3hz.npy``
    ``(5, 240)``, flattened in C order) or a text file with one id per line."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            ids = [str(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
        else:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except Exception as exc:
        raise MindVideoError(
            f"expected a scene-id file (.npy of strings/ints, or .txt) at {path}",
            f"{type(exc).__name__}: {exc}",
            "check --scenes",
        ) from None
    if len(ids) != n_clips:
        raise MindVideoError(
            "expected one scene id per clip",
            f"{len(ids)} ids in {path} for {n_clips} clips",
            "pass the scene ids of exactly the evaluated clips",
        )
    return ids


def scene_mask(scene_ids: Sequence[str], *, drop_cuts: bool = True, one_per_scene: bool = False) -> np.ndarray:
    """Which clips to evaluate ``(N,)`` bool: without clips that cross a scene cut (id contains ``-``) if
    ``drop_cuts``, and only the first clip of each scene if ``one_per_scene`` (the reference's ``get_scene_seg``)."""
    keep, seen = np.ones(len(scene_ids), dtype=bool), set()
    for i, scene in enumerate(map(str, scene_ids)):
        if drop_cuts and "-" in scene:
            keep[i] = False
        elif one_per_scene:
            keep[i] = scene not in seen
            seen.add(scene)
    return keep
