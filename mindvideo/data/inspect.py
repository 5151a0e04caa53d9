"""Summaries and a diagnostic plot of prepared datasets and single run files (``mindvideo data inspect``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data.io import LoadConfig, load_run
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)


def describe(path: str | Path, loading: LoadConfig | None = None) -> dict[str, Any]:
    """Shapes and voxel counts of a prepared folder, or shape/TR/value range of one run file."""
    path = Path(path)
    if path.is_dir():
        return describe_prepared(path)
    run = load_run(path, loading or LoadConfig(tr_tolerance=float("inf")))
    data = np.asarray(run.data)
    finite = np.isfinite(data)
    return {
        "kind": "run",
        "path": str(path),
        "shape": list(data.shape),
        "tr": run.tr,
        "nonfinite_values": int((~finite).sum()),
        "constant_voxels": int((np.nanstd(np.where(finite, data, np.nan), axis=0) == 0).sum()),
        "min": float(np.nanmin(data)) if finite.any() else None,
        "max": float(np.nanmax(data)) if finite.any() else None,
    }


def describe_prepared(root: Path) -> dict[str, Any]:
    """summary.json plus the shapes of every split's arrays (read from the .npy headers)."""
    summary_path = root / "summary.json"
    if not summary_path.is_file():
        raise MindVideoError(
            f"expected a prepared dataset (summary.json) in {root}",
            "no summary.json",
            "run `mindvideo data prepare --out` on it first, or pass a run file",
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    shapes = {}
    for split in ("train", "test"):
        for name in ("fmri", "video", "index", "negative_fmri"):
            file = root / split / f"{name}.npy"
            if file.is_file():
                shapes[f"{split}/{name}"] = list(np.load(file, mmap_mode="r").shape)
    runs = sorted((root / "train" / "runs").glob("*.npy"))
    if runs:
        shapes["train/runs"] = f"{len(runs)} runs, each (T, V)"
    return {"kind": "prepared", "path": str(root), "shapes": shapes, **summary}


def plot_prepared(root: str | Path, png: str | Path, voxels: int = 5) -> Path:
    """A PNG with (left) a few voxel time series of the first training segment and (right) the reproducibility
    histogram of all valid voxels, selected ones highlighted. Written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MindVideoError(
            "expected matplotlib for the inspect plot", "not installed", "pip install matplotlib, or pass --no-plot"
        ) from None
    root, png = Path(root), Path(png)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    _plot_series(left, root, voxels)
    _plot_histogram(right, root)
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png


def _series(root: Path) -> np.ndarray | None:
    """(T, V_model) first frame of every window of the first training segment (or of the first HCP run)."""
    runs = sorted((root / "train" / "runs").glob("*.npy"))
    if runs:
        return np.load(runs[0], mmap_mode="r")
    if not (root / "train" / "fmri.npy").is_file():
        return None
    fmri, index = np.load(root / "train" / "fmri.npy", mmap_mode="r"), np.load(root / "train" / "index.npy")
    return fmri[index[:, 0] == 0, 0]


def _plot_series(ax, root: Path, voxels: int) -> None:
    series = _series(root)
    if series is None:
        ax.text(0.5, 0.5, "no training windows", ha="center")
        return
    order = _most_reproducible(root, series.shape[1])[:voxels]
    for rank, v in enumerate(order):
        ax.plot(np.asarray(series[:, v]) + 3.0 * rank, lw=1, label=f"voxel {v}")
    ax.set(title="voxel time series (first training segment, offset)", xlabel="TR", ylabel="normalised signal")
    ax.legend(fontsize=7, loc="upper right")


def _most_reproducible(root: Path, n_model: int) -> np.ndarray:
    """Model-voxel indices ordered by reproducibility (falls back to the first voxels)."""
    path = root / "reproducibility.npz"
    if path.is_file():
        with np.load(path) as rep:
            if "mean_z" in rep.files:
                z_selected = rep["mean_z"][rep["selected"]]  # in the order of the kept voxels
                return np.argsort(-z_selected, kind="stable")
    return np.arange(n_model)


def _plot_histogram(ax, root: Path) -> None:
    path = root / "reproducibility.npz"
    with np.load(path) if path.is_file() else _Empty() as rep:
        if "mean_z" not in rep.files:
            ax.text(0.5, 0.5, "no repeated runs: no reproducibility", ha="center")
            return
        z, valid, selected = rep["mean_z"], ~rep["bad"], rep["selected"]
    bins = np.linspace(float(z[valid].min()), float(z[valid].max()) + 1e-6, 40)
    ax.hist(z[valid], bins=bins, color="0.7", label=f"all valid ({int(valid.sum())})")
    ax.hist(z[selected], bins=bins, color="tab:red", alpha=0.7, label=f"selected ({int(selected.sum())})")
    ax.set(title="reproducibility between repeats", xlabel="mean Fisher z", ylabel="voxels")
    ax.legend(fontsize=8)


class _Empty:
    files: tuple[str, ...] = ()

    def __enter__(self) -> _Empty:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
