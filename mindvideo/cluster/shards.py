"""The shards of a batch reconstruction and their files (nothing of Ray here).

A shard is one model call of the single-process run: the windows ``start:end`` of one batch
(:func:`mindvideo.cli.generation.batch_ranges`), with the same negative and the same seed. The call draws its noise
from the seed for the whole batch, so a shard sees exactly the noise its windows see without a cluster, and the
assembled output equals the single-process output bit for bit.

Each finished shard is two files in the job's work folder, ``<work>/<key>/shard-<start>-<end>.npy`` (the model's
output for those windows) and, written after it, ``shard-<start>-<end>.json`` (the settings key, the windows, the
array's shape and SHA-256, who computed it and how long it took). ``key`` hashes everything the result depends on
(:func:`settings_key`): the sampling settings, the batch size, the input windows and negative, the model files. A
later run with the same key reuses a shard whose record and array check out (:func:`finished_shard`) and computes
only the others: a crashed or interrupted job resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import output_owner, write_marker
from mindvideo.media import atomic_path
from mindvideo.pipeline import GenerationConfig

WORK_COMMAND = "generate --ray"  # the marker of a work folder
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One model call: windows ``start:end`` of setting ``setting`` (its key ``key``), written to ``path``."""

    setting: int
    key: str
    start: int
    end: int
    fmri: np.ndarray  # (end - start, W, V)
    negative: np.ndarray | None  # as the single-process call gets it (batch_negative)
    cfg: GenerationConfig
    output: str  # "float" or "uint8" (mindvideo.cli.generation.output_kind)
    path: Path  # absolute .npy


# --------------------------------------------------------------------------------------------------- keys


def array_digest(array: np.ndarray | None) -> str | None:
    """SHA-256 of an array's shape, dtype and bytes (``None`` for ``None``)."""
    if array is None:
        return None
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def folder_fingerprint(path: str | Path | None) -> list[Any] | None:
    """The files of a model folder as (relative path, size, mtime_ns): changes when any weight file is replaced,
    without reading gigabytes of weights."""
    if path is None:
        return None
    root = Path(path).resolve()
    if root.is_file():
        stat = root.stat()
        return [[root.name, stat.st_size, stat.st_mtime_ns]]
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def settings_key(record: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``record`` as sorted JSON: equal only for equal settings."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- files


def shard_path(work: Path, key: str, start: int, end: int) -> Path:
    """``<work>/<key>/shard-<start>-<end>.npy`` (absolute: Ray workers need not share the driver's folder)."""
    return Path(os.path.abspath(work)) / key / f"shard-{start:06d}-{end:06d}.npy"


def record_path(path: Path) -> Path:
    """The record beside a shard's array: ``shard-….json``."""
    return Path(path).with_suffix(".json")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(task: ShardTask, video: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    """The shard's array, then its record, each written whole (temporary name, then rename): a record exists only
    beside a complete array. Returns the record."""
    path = Path(task.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, video)
    record = {
        "key": task.key,
        "windows": [task.start, task.end],
        "shape": list(video.shape),
        "dtype": str(video.dtype),
        "sha256": file_digest(path),
        **info,
    }
    with atomic_path(record_path(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_record(path: Path) -> dict[str, Any] | None:
    """A shard's record, ``None`` if missing or unreadable."""
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finished_shard(task: ShardTask) -> bool:
    """Whether ``task``'s result is on disk for these very settings: a record with the task's key and windows, and
    the array it describes (same SHA-256)."""
    record = read_record(task.path)
    if record is None or record.get("key") != task.key or record.get("windows") != [task.start, task.end]:
        return False
    try:
        return Path(task.path).is_file() and file_digest(task.path) == record.get("sha256")
    except OSError:
        return False


def read_shards(tasks: list[ShardTask]) -> np.ndarray:
    """The shards of one setting, in window order, as one array (checked against their records)."""
    parts = []
    for task in sorted(tasks, key=lambda t: t.start):
        if not finished_shard(task):
            raise MindVideoError(
                f"expected the finished shard {task.path}", "it is missing or does not match its record",
                "run the same command again: missing shards are recomputed",
            )  # fmt: skip
        parts.append(np.load(task.path))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# --------------------------------------------------------------------------------------------------- work folder


def open_work_folder(work: Path) -> Path:
    """Create (or reuse) the job's work folder: a new or empty folder, or an earlier job's (any settings; each has
    its own sub-folder). Anything else is refused and left untouched."""
    work = Path(os.path.abspath(work))
    if work.exists() and (not work.is_dir() or work.is_symlink()):
        raise MindVideoError("expected a folder for the Ray job's shards", f"{work} is not one", "pass --ray-work DIR")
    if work.is_dir() and any(work.iterdir()) and output_owner(work) != WORK_COMMAND:
        raise MindVideoError(
            "expected a new, empty or earlier --ray work folder for the shards",
            f"{work} holding other files",
            "choose another folder with --ray-work",
        )
    try:
        work.mkdir(parents=True, exist_ok=True)
        if output_owner(work) != WORK_COMMAND:
            write_marker(work, WORK_COMMAND)
    except OSError as exc:
        raise MindVideoError(
            f"expected a writable folder for the shards at {work}", str(exc), "check --ray-work"
        ) from None
    return work


def update_manifest(work: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """``<work>/manifest.json``: for each settings key, the settings it stands for and its shards (entries from
    earlier jobs are kept)."""
    path = Path(work) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    manifest.update(entries)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
