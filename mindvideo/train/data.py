"""Training data: prepared folders, array datasets, a seeded resumable batch order and rank-invariant randomness.

Two ideas make runs reproducible, resumable and independent of the process count:

* **Batch order** — the sample stream is a concatenation of per-epoch permutations drawn from
  ``default_rng([seed, epoch])``; optimiser step ``s`` takes stream items ``[s·B, (s+1)·B)`` (B: global batch).
  Nothing but the step has to be saved to resume, and each rank / accumulation micro-step takes a fixed slice.
* **Per-sample randomness** (:class:`StepRandom`) — noise, timesteps, masks and dropout draws are generated for
  the whole global batch from a generator keyed by ``(seed, step, name)`` and sliced to this process's samples, so
  2 processes with batch B/2 draw exactly what 1 process with batch B draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- prepared folders


@dataclasses.dataclass
class StimulusSplit:
    """One split of a ``mindvideo data prepare`` folder (arrays memory-mapped).

    ``fmri`` (N, W, V) float32, ``video`` (N, F, H, W, 3) uint8 or None, ``captions`` N strings or None,
    ``negative`` (W, V) float32 (the split's mean window), ``index`` (N, 2) segment number and stimulus TR."""

    root: Path
    split: str
    fmri: np.ndarray
    video: np.ndarray | None
    captions: list[str] | None
    negative: np.ndarray
    index: np.ndarray
    segments: list[str]

    def __len__(self) -> int:
        return len(self.fmri)


def data_kind(root: str | Path) -> str:
    """``"stimulus"`` (fMRI windows + stimulus) or ``"hcp"`` (fMRI runs only) for a prepared folder; anything else
    raises :class:`MindVideoError` saying what the folder looks like and what to run."""
    root = Path(root)
    if not root.is_dir():
        raise MindVideoError(f"expected a prepared data folder at {root}", "no such folder", "check --data")
    if (root / "train" / "fmri.npy").is_file():
        return "stimulus"
    if (root / "train" / "runs").is_dir():
        return "hcp"
    if (root / "stimuli").is_dir() or (root / "dataset.json").is_file():
        found = "a raw dataset (stimuli/, dataset.json)"
        fix = f"run `mindvideo data prepare --layout wen --src {root} --out PREPARED` and pass PREPARED"
    elif (root / "fmri_encoder").is_dir() or (root / "stage.json").is_file():
        found, fix = "a checkpoint or training output", "pass the prepared data folder as --data"
    else:
        found, fix = f"{sorted(p.name for p in root.iterdir())[:8]}", "run `mindvideo data prepare` first"
    raise MindVideoError(f"expected a folder written by `mindvideo data prepare` at {root}", found, fix)


def load_split(
    root: str | Path, split: str = "train", *, video: bool = False, captions: bool = False
) -> StimulusSplit:
    """A stimulus split; ``video`` / ``captions`` make them required (a clear error names the missing part)."""
    root = Path(root)
    kind = data_kind(root)
    if kind != "stimulus":
        raise MindVideoError(
            f"expected a stimulus dataset (fMRI windows paired with video) at {root}",
            "an HCP pre-training folder (fMRI runs only)",
            "pass it to `mindvideo train mbm` only; video stages need `data prepare --layout wen|arrays|custom`",
        )
    folder = root / split
    if not (folder / "fmri.npy").is_file():
        raise MindVideoError(
            f"expected the {split} split at {folder}", "no fmri.npy", "re-run `mindvideo data prepare`"
        )
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    has_video = (folder / "video.npy").is_file()
    if video and not has_video:
        raise MindVideoError(
            f"expected stimulus frames ({folder / 'video.npy'})", "an fMRI-only folder", "prepare without --no-video"
        )
    if captions and not meta.get("captions"):
        raise MindVideoError(
            f"expected captions in {folder / 'meta.json'}",
            "none",
            "add stimuli/captions/<segment>.txt (one caption per TR) and prepare again",
        )
    return StimulusSplit(
        root=root,
        split=split,
        fmri=np.load(folder / "fmri.npy", mmap_mode="r"),
        video=np.load(folder / "video.npy", mmap_mode="r") if has_video else None,
        captions=meta.get("captions"),
        negative=np.load(folder / "negative_fmri.npy").astype(np.float32),
        index=np.load(folder / "index.npy"),
        segments=list(meta["segments"]),
    )


def hcp_windows(root: str | Path, window: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Memory-mapped ``(T, V)`` runs of a ``prepare --layout hcp`` folder and the ``(N, 2)`` (run, first frame)
    table of every window of ``window`` consecutive frames."""
    runs = [np.load(p, mmap_mode="r") for p in sorted((Path(root) / "train" / "runs").glob("*.npy"))]
    if not runs:
        raise MindVideoError(f"expected run files in {Path(root) / 'train' / 'runs'}", "none", "re-run data prepare")
    table = [(r, t) for r, run in enumerate(runs) for t in range(len(run) - window + 1)]
    return runs, np.asarray(table, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------------- datasets


class ArrayDataset(tud.Dataset):
    """Item ``i`` = ``{key: array[i]}`` for every array, plus ``{key: table[ids[i]]}`` for every lookup.

    Lookups keep per-sample data that repeats (one text condition per distinct caption) stored once."""

    def __init__(self, arrays: dict[str, np.ndarray], lookups: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.arrays, self.lookups = arrays, lookups or {}
        sizes = {len(a) for a in arrays.values()} | {len(ids) for ids, _ in self.lookups.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays of different lengths: {sizes}")
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {k: torch.from_numpy(np.array(a[i])) for k, a in self.arrays.items()}
        item.update({k: torch.from_numpy(np.array(table[ids[i]])) for k, (ids, table) in self.lookups.items()})
        return item


class RunWindows(tud.Dataset):
    """Windows ``(W, V)`` float32 of memory-mapped runs, addressed by a ``(run, first frame)`` table."""

    def __init__(self, runs: list[np.ndarray], table: np.ndarray, window: int):
        self.runs, self.table, self.window = runs, table, window

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, t = self.table[i]
        return {"fmri": torch.from_numpy(np.array(self.runs[r][t : t + self.window], dtype=np.float32))}


# --------------------------------------------------------------------------------------------------- batch order


def global_batch(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Dataset indices of optimiser step ``step``'s global batch (length ``batch_size``)."""
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(n - offset, start + batch_size - pos)
        out.append(perm[offset : offset + take])
        pos += take
    return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """This process's share of one micro-step: samples ``[lo, hi)`` of the global batch."""

    step: int
    micro: int
    lo: int
    hi: int
    batch_size: int


def chunk_of(step: int, micro: int, batch_size: int, grad_accum: int, rank: int, world: int) -> Chunk:
    """Micro-step ``micro`` of ``step`` on ``rank``: the global batch is cut into ``grad_accum · world`` equal parts,
    ordered micro-step-major."""
    parts = grad_accum * world
    size = batch_size // parts
    c = micro * world + rank
    return Chunk(step, micro, c * size, (c + 1) * size, batch_size)


class StepBatches(tud.Sampler):
    """Batch sampler: this rank's sample indices for every micro-step from ``start`` to ``steps``."""

    def __init__(
        self, n: int, batch_size: int, grad_accum: int, seed: int, start: int, steps: int, rank: int, world: int
    ):
        self.n, self.batch_size, self.grad_accum, self.seed = n, batch_size, grad_accum, seed
        self.start, self.steps, self.rank, self.world = start, steps, rank, world

    def __len__(self) -> int:
        return (self.steps - self.start) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            batch = global_batch(self.n, self.batch_size, self.seed, step)
            for micro in range(self.grad_accum):
                c = chunk_of(step, micro, self.batch_size, self.grad_accum, self.rank, self.world)
                yield batch[c.lo : c.hi].tolist()


# --------------------------------------------------------------------------------------------------- randomness


class StepRandom:
    """Per-sample random draws of one chunk, identical whichever process or micro-step draws them.

    Every call generates the draw for the *global* batch from ``Generator().manual_seed(h(seed, step, name))`` and
    returns rows ``[lo, hi)``; distinct ``name``s give independent streams, so the call order does not matter."""

    def __init__(self, seed: int, chunk: Chunk, device: torch.device | str = "cpu"):
        self.seed, self.chunk, self.device = seed, chunk, torch.device(device)

    def generator(self, name: str) -> torch.Generator:
        digest = hashlib.blake2b(f"{self.seed}/{self.chunk.step}/{name}".encode(), digest_size=8).digest()
        return torch.Generator("cpu").manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.chunk.lo : self.chunk.hi].to(self.device)

    def randn(self, name: str, *shape: int) -> torch.Tensor:
        """Standard normal ``(hi − lo, *shape)``."""
        return self._rows(torch.randn(self.chunk.batch_size, *shape, generator=self.generator(name)))

    def rand(self, name: str, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) ``(hi − lo, *shape)``."""
        return self._rows(torch.rand(self.chunk.batch_size, *shape, generator=self.generator(name)))

    def randint(self, name: str, high: int, *shape: int) -> torch.Tensor:
        """Integers in [0, high) ``(hi − lo, *shape)``."""
        g = self.generator(name)
        return self._rows(torch.randint(high, (self.chunk.batch_size, *shape), generator=g))


def single_chunk(batch_size: int, step: int = 0) -> Chunk:
    """The whole batch as one chunk (validation, tests)."""
    return Chunk(step, 0, 0, batch_size, batch_size)


def describe(split: StimulusSplit) -> dict[str, Any]:
    """Shapes for logs and stage.json."""
    return {
        "windows": len(split),
        "fmri": list(split.fmri.shape[1:]),
        "video": None if split.video is None else list(split.video.shape[1:]),
        "captions": split.captions is not None,
    }
