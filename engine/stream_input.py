"""The streaming decoder's input stage: one scanner TR → a cleaned raw vector ``(V_raw,)``; model frames → windows.

:func:`raw_frame` turns what a scanner or a client sends (a 3-D NIfTI volume, a one-row CIFTI image, a raw vector)
into the ``(V_raw,)`` vector the fitted transform expects; :class:`OnlineCleaner` cleans it causally, one TR at a
time, instead of the offline whole-run detrend + z-score (see :mod:`mindvideo.engine.stream` for how they differ);
:class:`FrameGuard` decides whether a TR is plausible before it touches any state; :class:`WindowBuffer` turns the
projected frames into the reference's sliding windows.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from mindvideo.config import Config
from mindvideo.errors import MindVideoError

CLEAN_MODES = ("running", "fixed", "none")

# --------------------------------------------------------------------------------------------------- cleaning


@dataclasses.dataclass
class OnlineCleanConfig(Config):
    """How raw frames are cleaned one TR at a time (see the module docstring). Times are in TRs."""

    mode: str = "running"  # running | fixed (given mean/std) | none (input is already clean)
    warmup: int = 20  # TRs whose clips are flagged cold
    highpass_halflife: float = 32.0  # running-mean subtraction; 0 = off
    stats_halflife: float = 64.0  # running mean/std of the z-score; 0 = cumulative
    freeze_after: int | None = None  # stop updating the running estimates after this many TRs
    eps: float = 1e-6  # a running std below this gives 0 (a constant voxel)

    def validate(self) -> None:
        ok = (
            self.mode in CLEAN_MODES
            and self.warmup >= 0
            and self.highpass_halflife >= 0
            and self.stats_halflife >= 0
            and (self.freeze_after is None or self.freeze_after >= 1)
        )
        if not ok:
            raise MindVideoError(
                f"expected online cleaning with mode in {CLEAN_MODES}, warm-up ≥ 0, half-lives ≥ 0, freeze ≥ 1",
                repr(self),
                "fix the cleaning options",
            )


def _alpha(halflife: float) -> float:
    """EMA weight of the newest sample for a half-life in samples (0 → 0: a cumulative mean)."""
    return 1.0 - 2.0 ** (-1.0 / halflife) if halflife > 0 else 0.0


class OnlineCleaner:
    """Causal per-voxel cleaning of raw frames ``(V_raw,)``; state is float64 ``(V_raw,)`` arrays (constant size).

    **Online cleaning vs offline**: offline (:meth:`FMRITransform.clean`) removes a 4th-order Legendre polynomial fit
    over the whole run and z-scores every voxel with the whole run's mean/std: both use the future, impossible live.
    This cleaner is causal: (1) high-pass by subtracting an exponential running mean (half-life
    ``highpass_halflife`` TRs; a first-order IIR high-pass, -3 dB at ``ln 2 / (2π·halflife·TR)`` Hz, ≈ 0.0017 Hz for
    32 TRs of 2 s), (2) z-score with an exponentially weighted running mean/variance of the high-passed signal
    (half-life ``stats_halflife`` TRs; 0 = cumulative Welford over every TR so far). Both estimators start as plain
    cumulative means (weight ``max(α, 1/(n+1))``), so the first TRs are well defined; TRs before ``warmup`` are
    flagged cold (``Clip.warm`` False). On simulated runs the post-warm-up output correlates with the offline
    transform at a median r ≈ 0.9 per voxel (tests/engine/test_engine_stream.py). ``mode="fixed"`` uses given
    per-voxel mean/std (e.g. from a calibration run) and ``freeze_after`` stops updating the running estimates: both
    make the cleaning a fixed affine map ``(x - a) / b``, so the clips equal the pipeline's on the windows of
    ``transform.project((run - a) / b)`` computed offline.
    """

    def __init__(
        self,
        n_raw: int,
        config: OnlineCleanConfig | None = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ):
        self.config = config or OnlineCleanConfig()
        self.config.validate()
        self.n_raw, self.count = n_raw, 0
        if self.config.mode == "fixed":
            if mean is None or std is None or np.shape(mean) != (n_raw,) or np.shape(std) != (n_raw,):
                raise MindVideoError(
                    f"expected per-voxel mean and std of shape ({n_raw},) for fixed cleaning",
                    f"{np.shape(mean)} and {np.shape(std)}",
                    "compute them with calibration_stats(run) on a run read like the training runs",
                )
            self.mean = np.asarray(mean, np.float64)
            self.std = np.where(np.asarray(std, np.float64) > self.config.eps, std, np.inf)
        self._hp = np.zeros(n_raw)  # running mean for the high-pass
        self._mu = np.zeros(n_raw)  # running mean / variance of the high-passed signal
        self._var = np.zeros(n_raw)

    @property
    def warm(self) -> bool:
        """True once ``warmup`` frames have been seen (always for ``fixed`` / ``none``)."""
        return self.config.mode != "running" or self.count >= self.config.warmup

    def update(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """One raw frame ``(V_raw,)`` → (cleaned ``(V_raw,)`` float32, whether it was cleaned after warm-up)."""
        cfg, warm = self.config, self.warm
        x = np.asarray(frame, np.float64)
        if not np.isfinite(x).all():  # one NaN would poison the running estimates for good
            raise MindVideoError(
                "expected finite values in a frame to clean",
                f"{int((~np.isfinite(x)).sum())} NaN/inf values",
                "check frames with FrameGuard first (the streaming decoder does)",
            )
        if cfg.mode == "none":
            out = x
        elif cfg.mode == "fixed":
            out = (x - self.mean) / self.std
        else:
            frozen = cfg.freeze_after is not None and self.count >= cfg.freeze_after
            n = self.count + 1  # samples including this one
            if cfg.highpass_halflife > 0 and not frozen:
                self._hp += max(_alpha(cfg.highpass_halflife), 1.0 / n) * (x - self._hp)
            h = x - self._hp if cfg.highpass_halflife > 0 else x
            if not frozen:  # West's weighted update of mean and variance
                w = max(_alpha(cfg.stats_halflife), 1.0 / n)
                delta = h - self._mu
                self._mu += w * delta
                self._var = (1.0 - w) * (self._var + w * delta * delta)
            sd = np.sqrt(self._var)
            out = np.divide(h - self._mu, sd, out=np.zeros_like(h), where=sd > cfg.eps)
        self.count += 1
        return out.astype(np.float32), warm


def calibration_stats(run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and std ``(V_raw,)`` float32 of a raw ``(T, V_raw)`` run, for ``mode="fixed"`` cleaning."""
    run = np.nan_to_num(np.asarray(run, np.float64))
    return run.mean(axis=0).astype(np.float32), run.std(axis=0).astype(np.float32)


# --------------------------------------------------------------------------------------------------- plausibility


@dataclasses.dataclass(frozen=True)
class GuardBounds:
    """The plausibility test of :class:`FrameGuard` (see there). Robust SD = 1.4826 × median absolute deviation."""

    history: int = 16  # good TRs the test compares against
    bootstrap: int = 3  # good TRs needed before the test runs (earlier TRs: shape, type, finite only)
    median_z: float = 5.0  # |TR median − recent medians| in robust SDs across voxels
    spread_ratio: float = 4.0  # TR robust SD vs recent ones: at most this many times larger or smaller
    voxel_z: float = 30.0  # |voxel − its recent median| in robust SDs over time (floored at the typical voxel's)
    rebaseline: int = 10  # this many implausible TRs in a row: the signal itself changed, start a new baseline


def _robust(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust SD (1.4826 × median absolute deviation) along ``axis``."""
    median = np.median(values, axis=axis, keepdims=True)
    mad = np.median(np.abs(values - median), axis=axis)
    return np.squeeze(median, axis), 1.4826 * mad


class FrameGuard:
    """Plausibility of one TR ``(V,)`` against the last good ones, before it reaches the cleaner.

    A TR passes when every value is finite and, once ``bootstrap`` TRs were accepted, (1) its median across voxels
    lies within ``median_z`` robust SDs (across voxels, typical of the recent TRs) of the recent TRs' median, (2) its
    robust SD across voxels is within a factor ``spread_ratio`` of theirs and (3) no voxel lies more than ``voxel_z``
    robust SDs (over the recent TRs, at least the typical voxel's) from its own recent median. Clean scans stay far
    inside these bounds (on the demo scan: median 0.2, spread ratio 1.07, voxel 8.3); a byte-swapped TR, text or
    random bytes read as float32, an all-zero TR or a few corrupted voxels are off by orders of magnitude. Accepted
    TRs join a ring of the last ``history`` (``history × V`` float32); ``rebaseline`` implausible TRs in a row
    (a lasting change of the signal itself) clear it, logged by the decoder. With no spread in the recent TRs
    (a constant signal) the test that needs it is skipped.
    """

    def __init__(self, bounds: GuardBounds | None = None):
        self.bounds = bounds or GuardBounds()
        self._ring: np.ndarray | None = None  # (history, V) float32
        self.accepted = 0  # TRs in the ring's history
        self.implausible_run = 0  # implausible TRs in a row

    def check(self, frame: np.ndarray) -> str | None:
        """``None`` when ``frame`` is plausible (it then joins the history), else the reason it is not."""
        x = np.asarray(frame, np.float32)
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            return f"{bad} non-finite values (NaN/inf) of {x.size}"
        reason = self._implausible(x) if self.accepted >= self.bounds.bootstrap else None
        if reason is None:
            self.implausible_run = 0
            self._remember(x)
            return None
        self.implausible_run += 1
        if self.implausible_run >= self.bounds.rebaseline:
            reason += f"; {self.implausible_run} implausible TRs in a row: new baseline from the next TRs"
            self._ring, self.accepted, self.implausible_run = None, 0, 0
        return reason

    def _remember(self, x: np.ndarray) -> None:
        if self._ring is None or self._ring.shape[1] != x.size:
            self._ring, self.accepted = np.zeros((self.bounds.history, x.size), np.float32), 0
        self._ring[self.accepted % self.bounds.history] = x
        self.accepted += 1

    def _implausible(self, x: np.ndarray) -> str | None:
        b, ring = self.bounds, self._ring[: min(self.accepted, self.bounds.history)]
        x64, ring64 = x.astype(np.float64), ring.astype(np.float64)
        medians, spreads = _robust(ring64)
        center, spread = float(np.median(medians)), float(np.median(spreads))
        median, tr_spread = _robust(x64)
        if spread > 0:
            z = abs(float(median) - center) / spread
            if z > b.median_z:
                shown = f"{float(median):.4g} vs {center:.4g} ± {spread:.3g}"
                return f"implausible: median {shown} of recent TRs (|z| {z:.3g} > {b.median_z:g})"
            ratio = float(tr_spread) / spread
            if not 1.0 / b.spread_ratio <= ratio <= b.spread_ratio:
                return f"implausible: spread {float(tr_spread):.4g} vs {spread:.4g} of recent TRs (× {ratio:.3g})"
        reference, deviation = _robust(ring64, axis=0)
        typical = float(np.median(deviation))
        if typical > 0:
            z = np.abs(x64 - reference) / np.maximum(deviation, typical)
            far = int(np.count_nonzero(z > b.voxel_z))
            if far:
                beyond = f"beyond {b.voxel_z:g} robust SDs of their recent values (max {z.max():.3g})"
                return f"implausible: {far} voxels {beyond}"
        return None


# --------------------------------------------------------------------------------------------------- input


def raw_frame(item: Any, transform: Any) -> np.ndarray:
    """One TR as the raw ``(V_raw,)`` vector the transform was fitted on.

    ``item``: a 3-D volume (array or NIfTI image) on the transform's mask grid (or ``X·Y·Z == n_raw`` voxels in C
    order when it has no mask), a one-row ``Cifti2Image`` (columns picked by the transform's ``cifti_select``) or a
    ``(V_raw,)`` vector. Anything else raises :class:`MindVideoError`.
    """
    import nibabel as nib

    if isinstance(item, nib.Cifti2Image):
        from mindvideo.data.io import cifti_columns

        rows = np.asarray(item.dataobj, np.float32)
        if rows.ndim != 2 or rows.shape[0] != 1:
            raise MindVideoError("expected a one-row CIFTI image per TR", f"shape {rows.shape}", "send one TR each")
        return rows[0, cifti_columns(item.header.get_axis(1), transform.loading.cifti_select)]
    if isinstance(item, (nib.Nifti1Image, nib.Nifti2Image)):
        mask = transform.mask
        if mask is not None and not np.allclose(item.affine, mask.affine, atol=1e-3):
            raise MindVideoError(
                "expected the volume to share the mask's affine", "different affines", "resample it first"
            )
        item = np.asarray(item.dataobj, np.float32)
    array = np.asarray(item)
    if array.dtype.kind not in "iuf":
        raise MindVideoError("expected a numeric fMRI frame", f"dtype {array.dtype}", "send float32 values")
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        return _volume_voxels(array, transform)
    if array.ndim != 1 or array.shape[0] != transform.n_raw:
        raise MindVideoError(
            f"expected one TR as a ({transform.n_raw},) raw vector or a 3-D volume",
            f"shape {array.shape}",
            "send the scanner's volume, or the voxels read with the training mask / CIFTI selection",
        )
    return array.astype(np.float32, copy=False)


def _volume_voxels(volume: np.ndarray, transform: Any) -> np.ndarray:
    mask = transform.mask
    if mask is not None:
        if volume.shape != mask.array.shape:
            raise MindVideoError(
                f"expected a volume on the training mask's grid {mask.array.shape}",
                f"shape {volume.shape}",
                "export volumes in the same space as the mask",
            )
        return volume[mask.array].astype(np.float32)
    if volume.size != transform.n_raw:
        raise MindVideoError(
            f"expected a volume of {transform.n_raw} voxels (the transform has no NIfTI mask)",
            f"shape {volume.shape}",
            "fit the transform on NIfTI runs with a mask, or send (V_raw,) vectors",
        )
    return volume.reshape(-1).astype(np.float32)


# --------------------------------------------------------------------------------------------------- windows


@dataclasses.dataclass
class WindowJob:
    """One complete window waiting for generation."""

    tr: int  # stimulus TR index t
    window: np.ndarray  # (W, V_model) float32
    arrival: float  # time.monotonic() of the frame that completed it (s)
    warm: bool
    held: tuple[int, ...] = ()  # frame indices in the window that stand in for a bad TR (the last good frame)


class WindowBuffer:
    """The last ``W`` model-space frames and the reference edge rule (see :mod:`mindvideo.engine.stream`).

    Constant memory: ``W + lag`` frames."""

    def __init__(self, window_size: int, lag: int = 0):
        self.window_size, self.lag = window_size, lag
        self.frames: collections.deque = collections.deque(maxlen=window_size + lag)
        self.count = 0  # frames pushed
        self.next_tr = 0  # next window index to emit

    def push(self, frame: np.ndarray, warm: bool, arrival: float, held: bool = False) -> WindowJob | None:
        """Add frame ``n`` (``held``: a stand-in for a bad TR); returns window ``n-lag-W+1`` when that exists."""
        self.frames.append((frame, warm, held))
        self.count += 1
        if self.count < self.lag + self.window_size:
            return None
        return self._job(self.next_tr, arrival)

    def flush(self, arrival: float) -> list[WindowJob]:
        """The windows still missing at the end of the scan (end indices clamped to the last frame)."""
        return [self._job(t, arrival) for t in range(self.next_tr, self.count - self.lag)]

    def _job(self, t: int, arrival: float) -> WindowJob:
        first = self.count - len(self.frames)  # frame index of self.frames[0]
        idx = [min(t + self.lag + k, self.count - 1) - first for k in range(self.window_size)]
        window = np.stack([self.frames[i][0] for i in idx])  # (W, V_model)
        self.next_tr = t + 1
        held = tuple(sorted({first + i for i in idx if self.frames[i][2]}))
        return WindowJob(t, window, arrival, all(self.frames[i][1] for i in idx), held)
