"""PyTorch datasets over fMRI windows and their stimulus frames.

Every stimulus dataset yields ``{"fmri": (W, V) float32, "video": (F, H, W, 3) uint8, "caption": str (when the
data has captions), "negative_fmri": (W, V) float32, "index": (2,) int64 segment number and stimulus TR}`` as numpy
arrays (PyTorch's default collate stacks them into tensors).

- :class:`PreparedDataset` reads a folder written by ``mindvideo data prepare`` (memory-mapped, any layout);
- :class:`LayoutDataset` reads a raw layout (Wen, arrays, custom) directly through a fitted transform;
- :class:`HCPStream` streams windows of many pre-training runs for masked brain modelling (fMRI only:
  ``{"fmri", "negative_fmri"}``), sharded across DataLoader workers, shuffled with a bounded buffer.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data as tud

from mindvideo.data.layouts import Segment
from mindvideo.data.prepare import CleanSegment, clean_segment
from mindvideo.data.preprocess import window_indices
from mindvideo.data.transform import FMRITransform
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)


class PreparedDataset(tud.Dataset):
    """One split (``train`` / ``test``) of a prepared folder; arrays stay memory-mapped."""

    def __init__(self, root: str | Path, split: str = "train", video: bool = True):
        self.root, self.split = Path(root), split
        folder = self.root / split
        if not (folder / "fmri.npy").is_file():
            raise MindVideoError(
                f"expected a prepared split at {folder} (fmri.npy)",
                "no such file",
                "run `mindvideo data prepare` first, or check the split name",
            )
        self.fmri = np.load(folder / "fmri.npy", mmap_mode="r")  # (N, W, V)
        self.index = np.load(folder / "index.npy")  # (N, 2)
        self.negative = np.load(folder / "negative_fmri.npy")  # (W, V)
        has_video = (folder / "video.npy").is_file()
        self.video = np.load(folder / "video.npy", mmap_mode="r") if video and has_video else None
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.segments: list[str] = meta["segments"]
        self.captions: list[str] | None = meta.get("captions")

    def __len__(self) -> int:
        return len(self.fmri)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "fmri": np.array(self.fmri[i]),
            "negative_fmri": self.negative,
            "index": self.index[i].astype(np.int64),
        }
        if self.video is not None:
            item["video"] = np.array(self.video[i])
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item

    @property
    def transform(self) -> FMRITransform:
        """The fitted transform saved with the data."""
        return FMRITransform.load(self.root / "data_transform")

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.root / "summary.json").read_text(encoding="utf-8"))


class LayoutDataset(tud.Dataset):
    """A raw layout's split read on the fly through a fitted transform (no prepare step).

    fMRI of every segment is cleaned and projected at construction (``(T, V_model)`` per segment, small); the
    video of a segment is decoded on first use and the most recent segment is cached.
    """

    def __init__(
        self,
        segments: list[Segment],
        transform: FMRITransform,
        *,
        split: str = "test",
        fps: float = 3.0,
        size: int = 256,
        tr: float | None = None,
    ):
        self.transform, self.fps, self.size = transform, fps, size
        self.tr = tr or transform.loading.tr
        cfg = transform.preprocess
        self.items: list[CleanSegment] = [
            clean_segment(s, transform.loading, transform.mask, cfg) for s in segments if s.split == split
        ]
        self.fmri = [transform.windows(transform.project(c.fmri), count=c.count) for c in self.items]
        self.offsets = np.cumsum([0] + [c.count for c in self.items])
        stacked = np.concatenate(self.fmri) if self.fmri else np.zeros((0, cfg.window_size, transform.num_voxels))
        self.negative = stacked.mean(axis=0).astype(np.float32) if len(stacked) else transform.negative_fmri
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        seg = int(np.searchsorted(self.offsets, i, side="right") - 1)
        t = i - int(self.offsets[seg])
        item: dict[str, Any] = {
            "fmri": self.fmri[seg][t],
            "negative_fmri": self.negative,
            "index": np.array([seg, t], np.int64),
        }
        segment = self.items[seg].segment
        if segment.video is not None:
            item["video"] = self._video(seg)[t]
        if segment.captions is not None:
            item["caption"] = segment.captions[t]
        return item

    def _video(self, seg: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != seg:
            item = self.items[seg]
            assert item.segment.video is not None
            frames = item.segment.video.read(item.count, tr=self.tr, fps=self.fps, size=self.size)
            self._cache = (seg, frames)
        return self._cache[1]


class HCPStream(tud.IterableDataset):
    """Windows of many runs for masked brain modelling, streamed from disk.

    ``runs`` are prepared ``(T, V_model)`` ``.npy`` files (``transform=None``) or raw run files read through
    ``transform`` (load, clean, project). Files are split across DataLoader workers; each epoch visits the files in a
    seeded random order and draws windows through a shuffle buffer of ``buffer`` windows.
    """

    def __init__(
        self,
        runs: list[Path],
        transform: FMRITransform | None = None,
        *,
        window_size: int = 2,
        shuffle: bool = True,
        buffer: int = 2048,
        seed: int = 0,
    ):
        if not runs:
            raise MindVideoError("expected at least one run to stream", "none", "check the prepared folder")
        self.runs, self.transform = list(runs), transform
        self.window_size = transform.window_size if transform is not None else window_size
        self.shuffle, self.buffer, self.seed, self.epoch = shuffle, buffer, seed, 0
        self.negative: np.ndarray | None = transform.negative_fmri if transform is not None else None

    @classmethod
    def prepared(cls, root: str | Path, **kwargs: Any) -> HCPStream:
        """The stream over ``OUT/train/runs/*.npy`` of a ``prepare --layout hcp`` folder."""
        root = Path(root)
        runs = sorted((root / "train" / "runs").glob("*.npy"))
        stream = cls(runs, None, **kwargs)
        transform = FMRITransform.load(root / "data_transform")
        stream.window_size, stream.negative = transform.window_size, transform.negative_fmri
        return stream

    def _frames(self, path: Path) -> np.ndarray:
        if self.transform is None:
            return np.load(path, mmap_mode="r")
        return self.transform.apply(self.transform.load_run(path))

    def _windows(self, files: list[Path]) -> Iterator[np.ndarray]:
        for path in files:
            frames = self._frames(path)
            for idx in window_indices(len(frames), self.window_size):
                yield np.asarray(frames[idx], dtype=np.float32)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = tud.get_worker_info()
        rng = random.Random(self.seed + self.epoch)
        files = list(self.runs)
        if self.shuffle:
            rng.shuffle(files)
        if info is not None:
            files = files[info.id :: info.num_workers]
        self.epoch += 1
        for window in _shuffled(self._windows(files), self.buffer if self.shuffle else 1, rng):
            item = {"fmri": window}
            if self.negative is not None:
                item["negative_fmri"] = self.negative
            yield item


def _shuffled(items: Iterator[np.ndarray], size: int, rng: random.Random) -> Iterator[np.ndarray]:
    """Reservoir-style shuffle buffer: memory bounded by ``size`` items."""
    pool: list[np.ndarray] = []
    for item in items:
        if len(pool) < size:
            pool.append(item)
            continue
        k = rng.randrange(size)
        yield pool[k]
        pool[k] = item
    rng.shuffle(pool)
    yield from pool
