"""Interpretability: where on the brain the fMRI encoder looks (MinD-Video §4.4's attention analysis).

For each encoder block we reduce the attention probabilities to one number per patch token:

* **spatial** — the attention a patch *receives*, averaged over windows, TRs, heads and query patches;
* **temporal** — how much a patch mixes information across the window's TRs: the mean off-diagonal mass of its
  TR-to-TR attention (0 = each TR only looks at itself).

Token values are then projected back: patch ``i`` covers model voxels ``i·p … i·p+p-1``; a model voxel is a kept
voxel (``j mod K``: the wrap-padding copies of the data transform), a kept voxel is a raw voxel
(``transform.keep``), and a raw voxel is a place in the brain — a voxel of the NIfTI mask the runs were read with,
or a CIFTI grayordinate (both saved with the transform). The maps are written as files standard viewers open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mindvideo.data.io import Grayordinates
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

KINDS = ("spatial", "temporal")


@dataclass
class AttentionMaps:
    """Per-block attention values: ``tokens[kind]`` (layers, n) and ``voxels[kind]`` (layers, V_raw)."""

    tokens: dict[str, np.ndarray]
    voxels: dict[str, np.ndarray]

    @property
    def layers(self) -> int:
        return len(self.tokens["spatial"])


@torch.no_grad()
def token_importance(encoder, windows: torch.Tensor, batch: int = 16) -> dict[str, np.ndarray]:
    """(N, W, V) windows → ``{"spatial": (layers, n), "temporal": (layers, n)}`` averaged over the windows."""
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(windows), batch):
        x = windows[start : start + batch].to(encoder.device, encoder.dtype)
        for layer, block in enumerate(encoder.attention_maps(x)):
            spatial = block["spatial"].float().mean(dim=(0, 1, 2)).mean(dim=0)  # received: (n,)
            values = {"spatial": spatial}
            if block["temporal"] is not None:
                t = block["temporal"].float().mean(dim=(0, 2))  # (n, W, W)
                w = t.shape[-1]
                off = 1.0 - t.diagonal(dim1=-2, dim2=-1).sum(-1) / w if w > 1 else torch.zeros(t.shape[0])
                values["temporal"] = off  # (n,)
            for kind, v in values.items():
                sums.setdefault(kind, np.zeros((len(encoder.blocks), v.numel())))[layer] += v.cpu().numpy() * len(x)
    return {kind: total / len(windows) for kind, total in sums.items()}


def tokens_to_raw(tokens: np.ndarray, keep: np.ndarray, n_raw: int, patch_size: int) -> np.ndarray:
    """(layers, n) token values → (layers, V_raw) raw-voxel values (0 for voxels the transform dropped)."""
    layers, n = tokens.shape
    kept = len(keep)
    model = np.repeat(tokens, patch_size, axis=1)  # (layers, n·p): model voxel j belongs to patch j // p
    target = np.arange(n * patch_size) % kept  # wrap-padding: model voxel j is kept voxel j mod K
    total = np.zeros((layers, kept))
    count = np.bincount(target, minlength=kept).astype(float)
    for layer in range(layers):
        total[layer] = np.bincount(target, weights=model[layer], minlength=kept)
    raw = np.zeros((layers, n_raw), dtype=np.float32)
    raw[:, keep] = total / np.maximum(count, 1.0)
    return raw


def explain(encoder, transform, windows: np.ndarray) -> AttentionMaps:
    """Attention maps of ``encoder`` over ``windows`` (N, W, V_model), projected to raw voxels via ``transform``."""
    if windows.ndim != 3 or windows.shape[1:] != (encoder.config.window_size, encoder.config.num_voxels):
        raise MindVideoError(
            f"expected windows (N, {encoder.config.window_size}, {encoder.config.num_voxels})",
            f"{windows.shape}",
            "use windows prepared with the checkpoint's data transform",
        )
    tokens = token_importance(encoder, torch.from_numpy(np.array(windows, dtype=np.float32)))  # a writable copy
    voxels = {
        k: tokens_to_raw(v, transform.keep, transform.n_raw, encoder.config.patch_size) for k, v in tokens.items()
    }
    return AttentionMaps(tokens, voxels)


# ------------------------------------------------------------------------------------------------------ writing


def write_cifti(values: np.ndarray, grayordinates, path: Path) -> Path:
    """A dense-scalar CIFTI (``.dscalar.nii``, one map per encoder block) on the transform's grayordinates."""
    import nibabel as nib
    from nibabel import cifti2

    names = cifti2.ScalarAxis([f"block {i}" for i in range(len(values))])
    header = cifti2.Cifti2Header.from_axes((names, grayordinates.axis()))
    image = cifti2.Cifti2Image(np.asarray(values, dtype=np.float32), header)
    image.nifti_header.set_intent("ConnDenseScalar")
    nib.save(image, str(path))
    return path


def render_png(volume: np.ndarray, path: Path, title: str) -> Path:
    """A mosaic of axial slices of one (X, Y, Z) map (nilearn's glass brain needs MNI space; ours may not be)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = [z for z in range(volume.shape[2]) if volume[:, :, z].any()] or [volume.shape[2] // 2]
    cols = min(len(slices), 8)
    rows = -(-len(slices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    vmax = float(np.abs(volume).max()) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for ax, z in zip(axes.ravel(), slices):
        ax.imshow(volume[:, :, z].T, origin="lower", cmap="hot", vmin=0, vmax=vmax)
        ax.set_title(f"z={z}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def top_overlap(values: np.ndarray, truth: np.ndarray, fraction: float = 0.1) -> tuple[float, float]:
    """Share of the top ``fraction`` most-attended voxels (among those with a value) that are in ``truth``,
    and the chance level (the share of ``truth`` among the same candidates)."""
    candidates = np.flatnonzero(values != 0)
    if len(candidates) == 0:
        return 0.0, 0.0
    k = max(1, round(fraction * len(candidates)))
    top = candidates[np.argsort(values[candidates])[::-1][:k]]
    return float(truth[top].mean()), float(truth[candidates].mean())


# ------------------------------------------------------------------------------------------------------ driver


@dataclass
class BrainSpace:
    """Where raw voxel ``r`` lives: ``ijk[r]`` in a volume of ``shape`` (``None`` for surface-only CIFTI data), and
    the CIFTI grayordinates for ``.dscalar.nii`` output (``None`` for NIfTI-read data)."""

    ijk: np.ndarray | None
    shape: tuple[int, ...] | None
    affine: np.ndarray | None
    grayordinates: Grayordinates | None = None
    rows: np.ndarray | None = None  # the raw voxels ``ijk`` belongs to, when only some have a volume place

    @property
    def volume_only(self) -> bool:
        return self.ijk is not None and self.rows is None


def brain_space(transform, template: Path | None = None) -> BrainSpace:
    """The brain space of the transform's raw voxels: its NIfTI mask, the CIFTI grayordinates saved with it, or
    (for transforms saved before grayordinates were recorded) those of a CIFTI ``template`` run."""
    if transform.mask is not None:
        ijk = np.argwhere(transform.mask.array)  # C order, as the runs were read
        return BrainSpace(ijk, transform.mask.array.shape, transform.mask.affine)
    gray = transform.grayordinates
    if template is not None:
        gray = Grayordinates.from_file(template, transform.loading.cifti_select)
        if len(gray) != transform.n_raw:
            raise MindVideoError(
                f"expected {transform.n_raw} selected grayordinates in {template} (the transform's raw voxels)",
                f"{len(gray)}",
                "use a run of the same subject and CIFTI selection",
            )
    if gray is None:
        raise MindVideoError(
            "expected a data transform that records where its voxels are (a NIfTI mask or CIFTI grayordinates)",
            "neither (voxels read from arrays, or a transform from an older version)",
            "pass --template RUN.dtseries.nii for CIFTI data, or re-run `mindvideo data prepare` with --mask",
        )
    if gray.volume_shape is None or not gray.in_volume.any():  # surface only: the CIFTI map is the output
        return BrainSpace(None, None, None, gray)
    if gray.in_volume.all():
        return BrainSpace(gray.voxel, gray.volume_shape, gray.affine, gray)
    rows = np.flatnonzero(gray.in_volume)  # surface + volume: the NIfTI holds the volume part
    return BrainSpace(gray.voxel[rows], gray.volume_shape, gray.affine, gray, rows)


def write_explanation(maps: AttentionMaps, space: BrainSpace, out: Path) -> list[Path]:
    """NIfTI volumes and/or CIFTI dscalars per kind, plus PNGs of the first, middle and last blocks."""
    import nibabel as nib

    written = []
    for kind, values in maps.voxels.items():
        if space.grayordinates is not None:
            written.append(write_cifti(values, space.grayordinates, out / f"{kind}_attention.dscalar.nii"))
        if space.ijk is None:
            continue
        volume = np.zeros((*space.shape, len(values)), dtype=np.float32)
        volume[tuple(space.ijk.T)] = (values if space.rows is None else values[:, space.rows]).T
        image = nib.Nifti1Image(volume, space.affine)
        nib.save(image, str(out / f"{kind}_attention.nii.gz"))
        written.append(out / f"{kind}_attention.nii.gz")
        for layer in sorted({0, len(values) // 2, len(values) - 1}):
            png = out / f"{kind}_block{layer}.png"
            written.append(render_png(volume[..., layer], png, f"{kind} attention, encoder block {layer}"))
    return written


def truth_on_raw_voxels(truth: Path, space: BrainSpace) -> np.ndarray:
    """The simulation's responsive voxels (``truth/subjectN.npz``) as a (V_raw,) bool vector."""
    if not space.volume_only:
        raise MindVideoError(
            "expected volume voxels only to compare with the simulated truth", "surface grayordinates", "drop --truth"
        )
    with np.load(truth) as data:
        atlas, responsive = data["atlas"], data["responsive"]
    grid = np.zeros(atlas.shape, dtype=bool)
    grid[(atlas >= 1) & (atlas <= 4)] = responsive  # the simulation's visual voxels in C order
    return grid[tuple(space.ijk.T)]
