"""Metrics and samples of a training run: CSV (always), TensorBoard (when installed), tqdm, GIF grids.

Only rank 0 writes. ``metrics.csv`` is long-format (``step,split,metric,value``) so every stage can log whatever it
measures without a fixed header; TensorBoard gets the same scalars under ``split/metric``.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class Tracker:
    """Scalar logging for one run; a no-op on ranks other than 0."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self._file = self._csv = self._tb = None
        if not enabled:
            return
        path = out / "metrics.csv"
        new = not path.exists()
        self._file = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "split", "metric", "value"])
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        else:
            log.info("tensorboard is not installed: metrics go to %s only", path)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self._csv.writerow([step, split, key, f"{float(value):.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{key}", float(value), step)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress(total: int, initial: int, desc: str, enabled: bool):
    """The training progress bar (loss, lr and samples/s go in its postfix); shown on rank 0 when stderr is a
    terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, disable=None if enabled else True, dynamic_ncols=True, leave=False
    )


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` → ``{"split/metric": [(step, value), …]}`` (for summaries and tests)."""
    out: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(f"{row['split']}/{row['metric']}", []).append((int(row["step"]), float(row["value"])))
    return out


# --------------------------------------------------------------------------------------------------- sample grids


def video_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Clips ``(F, H, W, 3)`` uint8 laid out in rows → one ``(F, H', W', 3)`` video with white gutters.

    Every clip must have the same size; shorter clips hold their last frame."""
    frames = max(len(c) for r in rows for c in r)
    h, w = rows[0][0].shape[1:3]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    grid = np.full((frames, n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, clip in enumerate(row):
            idx = np.minimum(np.arange(frames), len(clip) - 1)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = clip[idx]
    return grid


def write_grid(path: Path, rows: list[list[np.ndarray]], fps: float = 3.0) -> Path:
    """Write :func:`video_grid` of ``rows`` as a GIF (atomically)."""
    from mindvideo.media import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, video_grid(rows), fps=fps)
