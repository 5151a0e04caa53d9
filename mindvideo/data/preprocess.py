"""fMRI preprocessing as small pure functions: ``(T, V)`` arrays in, arrays out, parameters in one config.

The order follows the usual Wen et al. 2018 / MinD-Video pipeline:

1. trim each run to the stimulus (``trim_start`` volumes dropped, ``n_volumes`` kept);
2. drop NaN / constant voxels (logged) — or refuse them with ``bad_voxels="error"``;
3. polynomial detrend (order 4) and z-score, per run;
4. per-segment reproducibility between repeats (Pearson r → Fisher z), then average the repeats;
5. voxel selection: one-sample t-test of the per-segment Fisher z over segments, Bonferroni-corrected
   (``select="ttest"``, p < ``alpha``), or the ``top_k`` most reproducible voxels, or an index file, or all;
6. normalisation statistics fitted on the training set (one scalar mean/std as in the reference, or per voxel);
7. wrap-padding of the voxel axis to a multiple of the encoder's patch size;
8. sliding windows of ``window_size`` TRs: sample ``t`` holds fMRI frames ``t+lag … t+lag+W-1``, each index
   clamped to the last frame of the segment (the reference's edge rule).

The hemodynamic ``lag`` defaults to 0 TRs, as in the reference code (which pairs the stimulus of TR ``t`` with the
fMRI of TR ``t`` and lets the window ``t, t+1`` absorb part of the delay); 2 TRs (≈ 4–5 s, the HRF peak) is the
usual choice elsewhere.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from mindvideo.config import Config
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

SELECT_METHODS = ("ttest", "topk", "index", "all")
NORMALISE_MODES = ("scalar", "voxel", "none")


@dataclasses.dataclass
class PreprocessConfig(Config):
    """Every preprocessing parameter; saved with the fitted transform."""

    trim_start: int = 0  # volumes dropped at the start of every run (scanner warm-up)
    n_volumes: int | None = None  # volumes kept per run; None: the stimulus length in TRs
    detrend_order: int = 4  # polynomial order removed per run; -1 switches detrending off
    zscore: bool = True  # z-score every voxel per run
    bad_voxels: str = "drop"  # "drop": drop NaN/constant voxels with a log line; "error": refuse them
    lag: int = 0  # hemodynamic lag in TRs: stimulus TR t is paired with fMRI from TR t + lag
    select: str = "ttest"  # ttest | topk | index | all
    alpha: float = 0.01  # Bonferroni-corrected p threshold for select="ttest"
    top_k: int = 0  # voxels kept by select="topk"
    index_file: str | None = None  # .npy/.txt of raw voxel indices for select="index"
    normalise: str = "scalar"  # scalar (one mean/std, as the reference) | voxel | none
    window_size: int = 2  # TRs per sample
    patch_size: int = 16  # voxel axis padded (wrapping) to a multiple of this

    def validate(self) -> None:
        checks = [
            (self.select in SELECT_METHODS, "select", f"one of {SELECT_METHODS}", self.select),
            (self.normalise in NORMALISE_MODES, "normalise", f"one of {NORMALISE_MODES}", self.normalise),
            (self.bad_voxels in ("drop", "error"), "bad_voxels", "'drop' or 'error'", self.bad_voxels),
            (self.window_size >= 1 and self.patch_size >= 1, "window/patch size", "≥ 1", self.window_size),
            (self.lag >= 0 and self.trim_start >= 0, "lag / trim_start", "≥ 0", self.lag),
            (0 < self.alpha < 1, "alpha", "in (0, 1)", self.alpha),
            (self.select != "topk" or self.top_k > 0, "top_k", "> 0 with select=topk", self.top_k),
            (self.select != "index" or bool(self.index_file), "index_file", "a file with select=index", None),
        ]
        for ok, name, expected, found in checks:
            if not ok:
                raise MindVideoError(f"expected {name} {expected}", repr(found), "fix the preprocessing options")


# --------------------------------------------------------------------------------------------------- per run


def trim(run: np.ndarray, start: int, length: int, source: str = "run") -> np.ndarray:
    """Volumes ``start … start+length-1`` of a ``(T, V)`` run; too short a run is an error."""
    if run.shape[0] < start + length:
        raise MindVideoError(
            f"expected at least {start + length} volumes in {source} ({start} trimmed + {length})",
            f"{run.shape[0]} volumes",
            "check --trim-start / --n-volumes and the run",
        )
    return run[start : start + length]


def bad_voxel_mask(run: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(V,) True where a voxel has a NaN/inf or does not vary over the run."""
    finite = np.isfinite(run).all(axis=0)
    spread = np.nanmax(np.where(finite, run, 0.0), axis=0) - np.nanmin(np.where(finite, run, 0.0), axis=0)
    return ~finite | (spread <= eps * np.maximum(1.0, np.abs(run[0])))


def polynomial_basis(n: int, order: int) -> np.ndarray:
    """(n, order+1) Legendre polynomials on [-1, 1]: well conditioned even for order 4 over long runs."""
    return np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n), order)


def detrend(run: np.ndarray, order: int = 4) -> np.ndarray:
    """Remove a least-squares polynomial of ``order`` (mean included) from every voxel of ``(T, V)``."""
    if order < 0:
        return run.astype(np.float32, copy=True)
    basis = polynomial_basis(run.shape[0], min(order, run.shape[0] - 1))  # (T, P)
    coef, *_ = np.linalg.lstsq(basis, run.astype(np.float64), rcond=None)  # (P, V)
    return (run - basis @ coef).astype(np.float32)


def zscore(run: np.ndarray, axis: int = 0, eps: float = 1e-8) -> np.ndarray:
    """Zero mean, unit std along ``axis``; constant voxels become 0 instead of NaN."""
    mean = run.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = run.std(axis=axis, keepdims=True, dtype=np.float64)
    return ((run - mean) / np.where(std > eps, std, np.inf)).astype(np.float32)


def clean_run(run: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Detrend then z-score one trimmed ``(T, V)`` run (stage 3); NaNs are zeroed first (bad voxels are dropped
    later, never used)."""
    run = np.nan_to_num(np.asarray(run, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    run = detrend(run, config.detrend_order)
    return zscore(run) if config.zscore else run


# --------------------------------------------------------------------------------------------------- repeats


def fisher_z(r: np.ndarray) -> np.ndarray:
    """arctanh(r), clipped away from ±1 and with NaN (a constant voxel) mapped to 0."""
    return np.arctanh(np.clip(np.nan_to_num(r), -0.999999, 0.999999))


def columnwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(V,) Pearson correlation of every column of two ``(T, V)`` arrays (0 where a column is constant)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return np.divide((a * b).sum(axis=0), denom, out=np.zeros(a.shape[1]), where=denom > 0)


def repeat_reliability(runs: np.ndarray) -> np.ndarray:
    """(V,) mean Fisher z over every pair of repeats of one segment, ``runs`` (R, T, V) with R ≥ 2."""
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return np.mean([fisher_z(columnwise_corr(runs[i], runs[j])) for i, j in pairs], axis=0)


def average_repeats(runs: np.ndarray) -> np.ndarray:
    """(T, V) mean over the repeat axis of ``(R, T, V)``."""
    return np.asarray(runs, dtype=np.float32).mean(axis=0)


# --------------------------------------------------------------------------------------------------- selection


def reproducibility_ttest(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided one-sample t-test of per-segment Fisher z ``(S, V)`` against 0: ``(t, p)`` each (V,).

    Needs S ≥ 2 segments (S − 1 degrees of freedom); p is uncorrected.
    """
    from scipy import stats

    n = z.shape[0]
    if n < 2:
        raise MindVideoError(
            "expected ≥ 2 training segments with repeats for the reproducibility t-test",
            f"{n}",
            "use --select topk/index/all, or add segments",
        )
    sd = z.std(axis=0, ddof=1)
    t = np.divide(z.mean(axis=0), sd / np.sqrt(n), out=np.zeros(z.shape[1]), where=sd > 0)
    return t, stats.t.sf(t, df=n - 1)


def select_voxels(z: np.ndarray | None, valid: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, dict]:
    """Raw voxel indices to keep (sorted) and stats for the summary.

    ``z`` (S, V) per-segment Fisher z (None when no segment has repeats); ``valid`` (V,) excludes bad voxels.
    """
    stats: dict = {"method": config.select, "valid": int(valid.sum())}
    if config.select == "all":
        return np.flatnonzero(valid), stats
    if config.select == "index":
        keep = read_index_file(config.index_file, valid.size)
        dropped = keep[~valid[keep]]
        if len(dropped):
            log.warning("dropping %d listed voxels that are NaN/constant: %s", len(dropped), dropped[:10].tolist())
        return keep[valid[keep]], stats
    if z is None:
        raise MindVideoError(
            f"expected repeated runs for --select {config.select}",
            "one run per segment",
            "use --select all or --select index",
        )
    mean_z = np.where(valid, z.mean(axis=0), -np.inf)
    if config.select == "topk":
        keep = np.sort(np.argsort(-mean_z, kind="stable")[: min(config.top_k, int(valid.sum()))])
        return keep, {**stats, "min_mean_z_kept": float(mean_z[keep].min())}
    t, p = reproducibility_ttest(z)
    p_bonf = np.minimum(p * int(valid.sum()), 1.0)
    keep = np.flatnonzero(valid & (p_bonf < config.alpha))
    stats.update(alpha=config.alpha, t_threshold=float(t[keep].min()) if len(keep) else None)
    if len(keep) == 0:
        raise MindVideoError(
            f"expected some voxels reproducible at Bonferroni p < {config.alpha}",
            f"none of {int(valid.sum())} (max t = {t.max():.2f} over {len(z)} segments)",
            "use --select topk --top-k N, raise --alpha, or check the run/stimulus alignment",
        )
    return keep, stats


def read_index_file(path: str | Path | None, n_raw: int) -> np.ndarray:
    """Sorted unique voxel indices from ``.npy`` (integers or a boolean mask) or text (one integer per line)."""
    path = Path(str(path))
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except Exception as exc:
        raise MindVideoError(
            f"expected a voxel index file at {path}",
            f"{type(exc).__name__}: {exc}",
            "write indices with numpy.save or one integer per line",
        ) from None
    values = np.asarray(values).ravel()
    if values.dtype == bool:
        values = np.flatnonzero(values) if values.size == n_raw else np.array([-1])
    if values.size == 0 or values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= n_raw:
        raise MindVideoError(
            f"expected voxel indices in [0, {n_raw}) in {path}",
            f"{values.size} values, dtype {values.dtype}",
            "regenerate the index file",
        )
    return np.unique(values.astype(np.int64))


# --------------------------------------------------------------------------------------------------- model input


def fit_normaliser(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of training data ``(..., V)``: scalars (shape ()), per voxel (V,), or (0, 1) for ``none``."""
    if mode == "none":
        return np.zeros((), np.float32), np.ones((), np.float32)
    axes = None if mode == "scalar" else tuple(range(x.ndim - 1))
    mean = np.asarray(x.mean(axis=axes, dtype=np.float64), np.float32)
    std = np.asarray(x.std(axis=axes, dtype=np.float64), np.float32)
    return mean, np.where(std > 1e-8, std, 1.0).astype(np.float32)


def wrap_pad(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the last axis to a multiple of ``multiple`` by wrapping around (the first voxels repeat)."""
    pad = (-x.shape[-1]) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, pad)]
    return np.pad(x, widths, mode="wrap")


def window_indices(n_frames: int, window: int, lag: int = 0, count: int | None = None) -> np.ndarray:
    """(N, W) fMRI frame indices: row ``t`` is ``t+lag … t+lag+W-1`` clamped to ``n_frames - 1``.

    ``N = count`` if given, else ``n_frames - lag`` (every stimulus TR that has its lagged frame).
    """
    count = n_frames - lag if count is None else count
    if count < 1 or lag + count > n_frames or n_frames < window:
        raise MindVideoError(
            f"expected at least {max(window, lag + max(count, 1))} fMRI frames for windows of "
            f"{window} TRs at lag {lag}",
            f"{n_frames} frames",
            "use a longer run, a smaller --window or --lag",
        )
    idx = np.arange(count)[:, None] + lag + np.arange(window)[None]
    return np.minimum(idx, n_frames - 1)


def sliding_windows(fmri: np.ndarray, window: int, lag: int = 0, count: int | None = None) -> np.ndarray:
    """(N, W, V) windows of a ``(T, V)`` segment by :func:`window_indices`."""
    return np.asarray(fmri)[window_indices(fmri.shape[0], window, lag, count)]
