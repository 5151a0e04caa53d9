"""The fitted fMRI transform: raw run ``(T, V_raw)`` → model input ``(T, V_model)`` → windows ``(N, W, V_model)``.

Fitting (on the training split) fixes the selected voxels, the normalisation statistics, the padding and the mean
training window used as the negative condition. The state is saved beside a checkpoint (``CKPT/data_transform/``)
so that inference on a new scan applies exactly the training transform::

    transform = FMRITransform.load("CKPT/data_transform")
    run = transform.load_run("new_scan.dtseries.nii")  # (T, V_raw), read like the training runs
    x = transform.apply(run)                           # (T, V_model): detrend, z-score, select, normalise, pad
    windows = transform.windows(x)                     # (T - lag, W, V_model) float32
    negative = transform.negative_fmri                 # (W, V_model), the adversarial-guidance input

Online use (one TR at a time) calls :meth:`FMRITransform.project` on frames the caller has already cleaned.
Folder format: ``config.json`` (loading + preprocessing configs, sizes, fit summary) and ``state.safetensors``
(``keep`` int64, ``mean``/``std`` float32, ``negative`` float32, optional ``mask`` uint8 + ``mask_affine``, and for
CIFTI reads the selected grayordinates' ``gray_vertex`` / ``gray_voxel`` / ``gray_affine``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import read_json
from mindvideo.data import preprocess as pp
from mindvideo.data.io import FMRIRun, Grayordinates, LoadConfig, VoxelMask, load_run
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder

log = logging.getLogger(__name__)

FORMAT = "mindvideo.data_transform"
VERSION = 1


@dataclasses.dataclass
class FMRITransform:
    """Fitted preprocessing state. Build with :meth:`fit`, persist with :meth:`save` / :meth:`load`."""

    loading: LoadConfig
    preprocess: pp.PreprocessConfig
    n_raw: int  # voxels per frame of a raw run
    keep: np.ndarray  # (V_sel,) int64 raw voxel indices, sorted
    mean: np.ndarray  # () or (V_sel,) float32
    std: np.ndarray  # () or (V_sel,) float32
    negative: np.ndarray  # (W, V_model) float32 mean training window
    mask: VoxelMask | None = None  # the NIfTI voxel mask the raw runs were read with
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    grayordinates: Grayordinates | None = None  # where the raw voxels of CIFTI-read runs live (for brain maps)

    # ----------------------------------------------------------------------------------------------- sizes

    @property
    def num_voxels(self) -> int:
        """V_model: selected voxels wrap-padded to a multiple of the patch size (the encoder's ``num_voxels``)."""
        patch = self.preprocess.patch_size
        return -(-len(self.keep) // patch) * patch

    @property
    def window_size(self) -> int:
        return self.preprocess.window_size

    @property
    def negative_fmri(self) -> np.ndarray:
        """(W, V_model) float32: the mean training window (the reference's negative condition)."""
        return self.negative

    # ----------------------------------------------------------------------------------------------- fitting

    @classmethod
    def fit(
        cls,
        segments: list[np.ndarray],
        reliability: np.ndarray | None,
        bad: np.ndarray,
        preprocess: pp.PreprocessConfig,
        loading: LoadConfig,
        mask: VoxelMask | None = None,
    ) -> FMRITransform:
        """Fit on the training split.

        ``segments``: cleaned, repeat-averaged training segments, each ``(T_s, V_raw)`` (T_s includes the lag's
        extra frames); ``reliability``: (S, V_raw) per-segment Fisher z between repeats, or None; ``bad``: (V_raw,)
        NaN/constant voxels, never kept.
        """
        preprocess.validate()
        n_raw = int(bad.size)
        # 1. voxel selection
        keep, stats = pp.select_voxels(reliability, ~bad, preprocess)
        # 2. normalisation statistics on the selected training voxels
        mean, std = pp.fit_normaliser(np.concatenate([s[:, keep] for s in segments]), preprocess.normalise)
        info = {"selection": stats, "n_bad": int(bad.sum()), "n_selected": len(keep)}
        transform = cls(loading, preprocess, n_raw, keep, mean, std, np.zeros(0, np.float32), mask, info)
        # 3. the negative condition: mean over every training window
        total, count = 0.0, 0
        for segment in segments:
            windows = transform.windows(transform.project(segment))
            total, count = total + windows.sum(axis=0, dtype=np.float64), count + len(windows)
        transform.negative = (total / max(count, 1)).astype(np.float32)
        log.info("fitted transform: %d raw → %d selected → %d model voxels", n_raw, len(keep), transform.num_voxels)
        return transform

    # ----------------------------------------------------------------------------------------------- applying

    def load_run(self, path: str | Path) -> np.ndarray:
        """A raw run read exactly as the training runs were: ``(T, V_raw)`` float32."""
        run: FMRIRun = load_run(path, self.loading, self.mask)
        self._check_raw(run.data.shape[-1], path)
        return run.data

    def clean(self, run: np.ndarray) -> np.ndarray:
        """Per-run detrend and z-score of a whole ``(T, V_raw)`` run."""
        return pp.clean_run(run, self.preprocess)

    def project(self, frames: np.ndarray) -> np.ndarray:
        """Cleaned frames ``(..., V_raw)`` → ``(..., V_model)``: select, normalise, wrap-pad. Stateless per frame."""
        frames = np.asarray(frames)
        self._check_raw(frames.shape[-1], "the input")
        x = frames[..., self.keep].astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            log.warning("%d NaN/inf values among the kept voxels were set to 0", int(bad.sum()))
            x[bad] = 0.0
        return pp.wrap_pad((x - self.mean) / self.std, self.preprocess.patch_size)

    def apply(self, run: np.ndarray) -> np.ndarray:
        """A whole raw run ``(T, V_raw)`` → ``(T, V_model)`` float32 (clean, then project)."""
        return self.project(self.clean(run))

    def windows(self, fmri: np.ndarray, lag: int | None = None, count: int | None = None) -> np.ndarray:
        """(N, W, V_model) windows of a transformed segment ``(T, V_model)`` with the reference edge rule.

        Window ``t`` holds frames ``t+lag … t+lag+W-1`` clamped to ``T-1``; ``N = count`` or ``T - lag``.
        """
        lag = self.preprocess.lag if lag is None else lag
        return pp.sliding_windows(fmri, self.window_size, lag, count).astype(np.float32, copy=False)

    def _check_raw(self, n: int, source: object) -> None:
        if n != self.n_raw:
            raise MindVideoError(
                f"expected {self.n_raw} raw voxels per frame (the transform's training data)",
                f"{n} in {source}",
                "load the scan with the same mask / CIFTI selection as for training",
            )

    # ----------------------------------------------------------------------------------------------- persistence

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``state.safetensors`` atomically into ``folder`` (replaced if present)."""
        from safetensors.numpy import save_file

        state = {
            "keep": self.keep.astype(np.int64),
            "mean": np.atleast_1d(self.mean),
            "std": np.atleast_1d(self.std),
            "negative": self.negative,
        }
        if self.mask is not None:
            state.update(mask=self.mask.array.astype(np.uint8), mask_affine=self.mask.affine.astype(np.float64))
        gray = None
        if self.grayordinates is not None:
            arrays, gray = self.grayordinates.to_state()
            state.update(arrays)
        config = {
            "format": FORMAT,
            "version": VERSION,
            "n_raw": self.n_raw,
            "num_voxels": self.num_voxels,
            "scalar_norm": self.mean.ndim == 0,
            "loading": self.loading.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "info": self.info,
            "grayordinates": gray,
        }
        with atomic_folder(folder) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / "state.safetensors"))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> FMRITransform:
        """Read a folder written by :meth:`save` (e.g. ``CKPT/data_transform``)."""
        folder = Path(folder)
        config = read_json(folder / "config.json")
        if config.get("format") != FORMAT:
            raise MindVideoError(
                f"expected a fitted data transform ({FORMAT}) in {folder}",
                f"format {config.get('format')!r}",
                "run `mindvideo data prepare` to create one",
            )
        state = _read_state(folder / "state.safetensors")
        try:
            mask = VoxelMask(state["mask"].astype(bool), state["mask_affine"]) if "mask" in state else None
            gray = config.get("grayordinates")
            gray = None if gray is None else Grayordinates.from_state(state, gray)
            mean, std = state["mean"], state["std"]
            if config["scalar_norm"]:
                mean, std = mean.reshape(()), std.reshape(())
            transform = cls(
                LoadConfig.from_dict(config["loading"]),
                pp.PreprocessConfig.from_dict(config["preprocess"]),
                int(config["n_raw"]),
                state["keep"],
                mean,
                std,
                state["negative"],
                mask,
                config.get("info", {}),
                gray,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MindVideoError(
                f"expected a complete data transform in {folder}",
                f"{type(exc).__name__}: {exc}",
                "re-run `mindvideo data prepare`",
            ) from None
        transform._validate(folder)
        return transform

    def _validate(self, folder: Path) -> None:
        ok = (
            self.keep.ndim == 1
            and len(self.keep) > 0
            and int(self.keep.max()) < self.n_raw
            and self.negative.shape == (self.window_size, self.num_voxels)
            and self.mean.size in (1, len(self.keep))
            and (self.grayordinates is None or len(self.grayordinates) == self.n_raw)
        )
        if not ok:
            raise MindVideoError(
                f"expected consistent transform arrays in {folder}",
                f"keep {self.keep.shape}, negative {self.negative.shape}, n_raw {self.n_raw}",
                "re-run `mindvideo data prepare`",
            )


def _read_state(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise MindVideoError(f"expected {path}", "no such file", "copy the whole data_transform folder")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise MindVideoError(
            f"expected a readable {path}", f"{type(exc).__name__}: {exc}", "re-run `mindvideo data prepare`"
        ) from None
