"""Dataset layouts on disk → a list of :class:`Segment` (one stimulus, its repeated fMRI runs, its video).

Four layouts are read: ``wen`` (Wen et al. 2018 raw files), ``arrays`` (the reference's preprocessed arrays),
``custom`` (``events.tsv``) and ``hcp`` (pre-training runs without stimuli); see :func:`layout_segments`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import read_json
from mindvideo.data.events import Event, read_events
from mindvideo.data.io import (
    FMRIRun,
    LoadConfig,
    VoxelMask,
    load_array,
    load_run,
    read_captions,
    read_video,
    video_duration,
)
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

LAYOUTS = ("wen", "arrays", "custom", "hcp")


@dataclasses.dataclass
class RunSource:
    """One repeat of a segment: a run file (``offset`` volumes before the stimulus onset) or a ``(T, V)`` array."""

    path: Path | None = None
    array: np.ndarray | None = None
    offset: int = 0

    def read(self, loading: LoadConfig, mask: VoxelMask | None) -> FMRIRun:
        if self.array is not None:
            return FMRIRun(np.asarray(self.array, dtype=np.float32), None, Path("<array>"))
        assert self.path is not None
        return load_run(self.path, loading, mask)


@dataclasses.dataclass
class VideoSource:
    """A stimulus video file (from ``start`` s) or a ``(T, F, H, W, 3)`` uint8 array already sampled per TR."""

    path: Path | None = None
    start: float = 0.0
    array: np.ndarray | None = None

    def read(self, n_trs: int, *, tr: float, fps: float, size: int) -> np.ndarray:
        """(n_trs, F, size, size, 3) uint8; an array source is returned as stored (its own F and size)."""
        if self.array is not None:
            if len(self.array) < n_trs:
                raise MindVideoError(f"expected {n_trs} TRs of video", f"{len(self.array)}", "check the video array")
            return np.asarray(self.array[:n_trs])
        assert self.path is not None
        return read_video(self.path, n_trs=n_trs, tr=tr, fps=fps, size=size, start=self.start)


@dataclasses.dataclass
class Segment:
    """One stimulus segment: ``n_trs`` stimulus TRs, its repeated runs, its video and per-TR captions."""

    name: str
    split: str
    runs: list[RunSource]
    n_trs: int
    video: VideoSource | None = None
    captions: list[str] | None = None


def subject_folder(subject: str | int) -> str:
    """``1`` → ``subject1``; other names unchanged."""
    text = str(subject)
    return f"subject{text}" if text.isdigit() else text


def read_dataset_json(root: Path, subject: str | int = "1") -> dict[str, Any]:
    """Loading defaults from ``ROOT/dataset.json`` (absent: {}); relative paths resolved against ROOT.

    Keys: ``tr``, ``mask``, ``atlas``, ``labels``, ``cifti_select``; ``{subject}`` in a path is replaced by the
    subject folder name.
    """
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    out = {k: data[k] for k in ("tr", "mask", "atlas", "labels", "cifti_select") if data.get(k) is not None}
    for key in ("mask", "atlas"):
        if key in out:
            out[key] = str(root / str(out[key]).replace("{subject}", subject_folder(subject)))
    return out


def _natural_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


# --------------------------------------------------------------------------------------------------- wen


def wen_segments(
    root: str | Path, subject: str | int = "1", fmri_format: str = "cifti", tr: float = 2.0
) -> list[Segment]:
    """Segments of the Wen 2018 raw layout for one subject (see the module docstring)."""
    root = Path(root)
    stimuli = root / "stimuli"
    videos = sorted((p for p in stimuli.glob("*.mp4") if re.fullmatch(r"(seg|test)\d+", p.stem)), key=_natural_key)
    if not videos:
        raise MindVideoError(
            f"expected stimulus videos seg<N>.mp4 / test<N>.mp4 in {stimuli}",
            "none",
            "point --src at the dataset root (the folder holding stimuli/)",
        )
    subject_dir = root / subject_folder(subject) / "fmri"
    if fmri_format not in ("cifti", "nifti"):
        raise MindVideoError("expected --fmri-format cifti or nifti", repr(fmri_format), "pick one")
    pattern = "{0}_*_Atlas.dtseries.nii" if fmri_format == "cifti" else "{0}_*.nii*"
    _check_stimuli_present(videos, subject_dir)
    segments = []
    for video in videos:
        folder = subject_dir / video.stem / fmri_format
        runs = sorted(folder.glob(pattern.format(video.stem)), key=_natural_key)
        if not runs:
            raise MindVideoError(
                f"expected {fmri_format} runs for stimulus {video.name} in {folder}",
                "none",
                "check --subject / --fmri-format, or remove the unused video",
            )
        n_trs = math.floor(video_duration(video) / tr + 0.05)
        captions = stimuli / "captions" / f"{video.stem}.txt"
        segments.append(
            Segment(
                video.stem,
                "test" if video.stem.startswith("test") else "train",
                [RunSource(p) for p in runs],
                n_trs,
                VideoSource(video),
                read_captions(captions) if captions.is_file() else None,
            )
        )
    check_repeat_counts(segments)
    return segments


def _check_stimuli_present(videos: list[Path], subject_dir: Path) -> None:
    """Every segment with fMRI runs has its stimulus video: a deleted video would silently drop its windows."""
    names = {v.stem for v in videos}
    runs = sorted(
        (p for p in subject_dir.glob("*") if p.is_dir() and re.fullmatch(r"(seg|test)\d+", p.name)), key=_natural_key
    )
    orphans = [p.name for p in runs if p.name not in names]
    if orphans:
        stimuli = videos[0].parent
        raise MindVideoError(
            f"expected a stimulus video for every segment with fMRI runs in {subject_dir}",
            f"no {', '.join(f'{n}.mp4' for n in orphans[:5])}{' …' if len(orphans) > 5 else ''} in {stimuli}",
            "restore the missing videos (or move those segments' runs out of the dataset)",
        )


def check_repeat_counts(segments: list[Segment]) -> None:
    """Every segment of a split must have the same number of repeats (Wen: 2 train, 10 test)."""
    for split in ("train", "test"):
        counts = {s.name: len(s.runs) for s in segments if s.split == split}
        if len(set(counts.values())) > 1:
            raise MindVideoError(
                f"expected the same number of {split} runs for every segment",
                f"{counts}",
                "add the missing runs or remove the extra ones",
            )


# --------------------------------------------------------------------------------------------------- arrays


def arrays_segments(root: str | Path, subject: str | int = "1") -> list[Segment]:
    """Segments of the reference's preprocessed array layout (one already-averaged run per segment)."""
    root = Path(root)
    segments: list[Segment] = []
    for split in ("train", "test"):
        fmri = load_array(_find_subject_array(root, split, subject))  # (S, T, V), memory-mapped
        video = load_array(_single(root, f"video_{split}_*.npy"))  # (S, T, F, H, W, 3)
        if fmri.ndim != 3 or video.ndim != 6 or video.shape[:2] != fmri.shape[:2] or video.dtype != np.uint8:
            raise MindVideoError(
                f"expected fmri (S, T, V) and uint8 video (S, T, F, H, W, 3) with the same S, T for {split} in {root}",
                f"fmri {fmri.shape}, video {video.shape} {video.dtype}",
                "regenerate the arrays",
            )
        text = _captions_array(root, split, fmri.shape[:2])
        for s in range(fmri.shape[0]):
            captions = None if text is None else [str(c) for c in text[s]]
            segments.append(
                Segment(
                    f"{split}{s + 1}",
                    split,
                    [RunSource(array=fmri[s])],
                    fmri.shape[1],
                    VideoSource(array=video[s]),
                    captions,
                )
            )
    return segments


def _find_subject_array(root: Path, split: str, subject: str | int) -> Path:
    for name in dict.fromkeys((str(subject), subject_folder(subject))):
        path = root / f"fmri_{split}_{name}.npy"
        if path.is_file():
            return path
    raise MindVideoError(
        f"expected fmri_{split}_{subject_folder(subject)}.npy in {root}",
        f"{sorted(p.name for p in root.glob('fmri_*.npy'))}",
        "check --src / --subject",
    )


def _single(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise MindVideoError(
            f"expected one file {pattern} in {root}", f"{[p.name for p in found]}", "keep exactly one such file"
        )
    return found[0]


def _captions_array(root: Path, split: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """(S, T) first caption per TR from ``text_{split}_*.npy`` (S, T[, F]) of strings, or None."""
    found = sorted(root.glob(f"text_{split}_*.npy"))
    if not found:
        return None
    try:
        text = np.load(found[0], allow_pickle=False)
    except Exception as exc:
        raise MindVideoError(f"expected a string array in {found[0]}", f"{exc}", "save it without pickle") from None
    if text.shape[:2] != shape or text.dtype.kind != "U":
        raise MindVideoError(
            f"expected captions of shape {shape}[, F] in {found[0]}",
            f"{text.shape} {text.dtype}",
            "regenerate the caption array",
        )
    return text if text.ndim == 2 else text[..., 0]


# --------------------------------------------------------------------------------------------------- custom


def custom_segments(root: str | Path, events: str | Path = "events.tsv", tr: float = 2.0) -> list[Segment]:
    """Segments of the "my own data" layout: an onset table over NIfTI/CIFTI/array runs and stimulus videos
    (:mod:`mindvideo.data.events`); every file the table names must exist."""
    root = Path(root)
    table = root / events
    rows = read_events(table)
    for row in rows:
        _check_listed(root, table, row)
    groups: dict[tuple[str, str], list[Event]] = {}
    for row in rows:
        groups.setdefault((row.stimulus, row.split), []).append(row)
    segments = []
    for (stimulus, split), members in groups.items():
        video = root / stimulus
        duration = members[0].duration if members[0].duration is not None else video_duration(video)
        runs = []
        for row in members:
            if abs(row.onset / tr - round(row.onset / tr)) > 0.05:
                log.warning(
                    "onset %.3f s of %s (line %d of %s) is not a whole number of TRs; rounding to %d TRs",
                    row.onset,
                    row.run,
                    row.line,
                    table,
                    round(row.onset / tr),
                )
            runs.append(RunSource(root / row.run, offset=round(row.onset / tr)))
        captions = members[0].captions
        segments.append(
            Segment(
                Path(stimulus).stem,
                split,
                runs,
                math.floor(duration / tr + 0.05),
                VideoSource(video),
                read_captions(root / captions) if captions else None,
            )
        )
    return segments


def _check_listed(root: Path, table: Path, row: Event) -> None:
    """The run, stimulus and captions files of one row exist (named by line, before anything is read)."""
    for column, name in (("run", row.run), ("stimulus", row.stimulus), ("captions", row.captions)):
        if name is not None and not (root / name).is_file():
            raise MindVideoError(
                f"expected the {column} file named on line {row.line} of {table}",
                f"no file at {root / name}",
                "restore the file or fix the row (paths are relative to --src)",
            )


# --------------------------------------------------------------------------------------------------- hcp


def hcp_runs(root: str | Path, pattern: str = "**/*.dtseries.nii") -> list[Path]:
    """Every run file under ``root`` matching ``pattern`` (sorted): the pre-training set."""
    root = Path(root)
    runs = sorted(p for p in root.glob(pattern) if p.is_file())
    if not runs:
        raise MindVideoError(
            f"expected run files matching {pattern!r} under {root}",
            "none",
            "pass --pattern (e.g. '*/*.npy') or check --src",
        )
    return runs


def layout_segments(
    layout: str, src: Path, *, subject: str, fmri_format: str, events: str, tr: float
) -> list[Segment]:
    """Dispatch on the layout name (``hcp`` has no segments; see :func:`hcp_runs`).

    Four layouts are read:

    ``wen``      Wen et al. 2018 raw files::

                     ROOT/stimuli/seg1.mp4 … segN.mp4 (train), test1.mp4 … (test), [stimuli/captions/<name>.txt]
                     ROOT/subject1/fmri/<name>/cifti/<name>_<repeat>_Atlas.dtseries.nii
                     ROOT/subject1/fmri/<name>/nifti/<name>_<repeat>.nii.gz     (our NIfTI variant; needs a mask)

    ``arrays``   the reference's preprocessed arrays: ``fmri_{train,test}_<subject>.npy`` (S, T, V),
                 ``video_{train,test}_*.npy`` (S, T, F, H, W, 3) uint8, optional ``text_{train,test}_*.npy``
                 (S, T[, F]).

    ``custom``   "my own data": ``ROOT/events.tsv`` with columns ``run`` (fMRI file), ``onset`` (s from the run's first
                 volume), ``stimulus`` (video file), optional ``duration`` (s; default the video's length), ``split``
                 (train/test; default train) and ``captions`` (text file, one caption per TR). Paths are relative to
                 ROOT. Rows showing the same stimulus are repeats of one segment.

    ``hcp``      pre-training runs without stimuli: every file under ROOT matching a glob pattern.
    """
    if layout == "wen":
        return wen_segments(src, subject, fmri_format, tr)
    if layout == "arrays":
        return arrays_segments(src, subject)
    if layout == "custom":
        return custom_segments(src, events, tr)
    raise MindVideoError(f"expected a layout with stimuli ({', '.join(LAYOUTS[:3])})", repr(layout), "fix --layout")
