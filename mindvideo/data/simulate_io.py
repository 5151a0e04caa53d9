"""Writers for the simulated dataset: mp4 (PyAV), CIFTI-2 dense series and 4-D NIfTI (nibabel), reference arrays.

Voxel order is shared by every format: the visual-cortex voxels in C order of the grid (``np.where`` of the mask),
then the other brain voxels. CIFTI stores the visual voxels as volume brain models named ``CORTEX_LEFT`` (x below
the midline) and ``CORTEX_RIGHT``, which concatenate to exactly that order, so ``cifti_select="cortex"`` and a NIfTI
read through ``visual_mask.nii.gz`` give identical columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mindvideo.data.io import read_video
from mindvideo.data.preprocess import PreprocessConfig, average_repeats, clean_run

if TYPE_CHECKING:
    from mindvideo.data.simulate import Brain, SimConfig, Stimulus


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(n, H, W, 3) uint8 → H.264 mp4 (yuv420p, near-lossless crf 12; MPEG-4 part 2 if libx264 is missing)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.options = {"crf": "12", "preset": "veryfast"}
        except Exception:  # a PyAV build without libx264
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.thread_count = 1  # bit-identical output for a given seed
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def brain_order(brain: Brain) -> np.ndarray:
    """Flat (C-order) grid indices of the brain voxels: visual voxels first, then the rest."""
    visual, rest = brain.visual.ravel(), (brain.atlas == 5).ravel()
    return np.concatenate([np.flatnonzero(visual), np.flatnonzero(rest)])


def brain_models(brain: Brain):
    """The CIFTI brain-model axis: visual voxels (left, right hemisphere) then the other brain voxels."""
    from nibabel.cifti2 import BrainModelAxis

    visual = brain.visual
    left = np.zeros_like(visual)
    left[: visual.shape[0] // 2] = True
    parts = [(visual & left, "CortexLeft"), (visual & ~left, "CortexRight"), (brain.atlas == 5, "Other")]
    axis = None
    for mask, name in parts:
        if mask.any():
            part = BrainModelAxis.from_mask(mask, name=name, affine=brain.affine)
            axis = part if axis is None else axis + part
    return axis


def write_cifti(path: Path, run: np.ndarray, brain: Brain, tr: float) -> None:
    """(T, V_brain) run in brain order → ``.dtseries.nii`` with a SeriesAxis of step ``tr`` seconds."""
    import nibabel as nib
    from nibabel import cifti2

    series = cifti2.SeriesAxis(start=0.0, step=tr, size=run.shape[0], unit="second")
    header = cifti2.Cifti2Header.from_axes((series, brain_models(brain)))
    image = cifti2.Cifti2Image(np.ascontiguousarray(run, dtype=np.float32), header)
    image.nifti_header.set_intent("ConnDenseSeries")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def write_nifti(path: Path, run: np.ndarray, brain: Brain, tr: float) -> None:
    """(T, V_brain) run in brain order → 4-D NIfTI-1 (zeros outside the brain), TR in ``pixdim[4]``."""
    import nibabel as nib

    volume = np.zeros((*brain.atlas.shape, run.shape[0]), dtype=np.float32)
    volume.reshape(-1, run.shape[0])[brain_order(brain)] = run.T  # rows: C-order grid positions
    image = nib.Nifti1Image(volume, brain.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((*np.abs(np.diag(brain.affine)[:3]), tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def write_arrays(
    root: Path, subject: str, stims: list[Stimulus], runs: dict[str, list[np.ndarray]], config: SimConfig
) -> None:
    """The reference's preprocessed layout under ``root/arrays``: per subject ``fmri_{split}_<subject>.npy``
    (S, T, V_visual) detrended, z-scored and repeat-averaged; shared ``video_{split}_<size>_<fps>hz.npy`` and
    ``text_{split}_<fps>hz.npy`` (S, T, F)."""
    folder = root / "arrays"
    folder.mkdir(exist_ok=True)
    clean = PreprocessConfig()
    hz = f"{config.arrays_fps:g}hz"
    for split, prefix in (("train", "seg"), ("test", "test")):
        chosen = [s for s in stims if s.name.startswith(prefix)]
        if not chosen:
            continue
        fmri = [
            average_repeats(np.stack([clean_run(r[: config.segment_trs], clean) for r in runs[s.name]]))
            for s in chosen
        ]
        np.save(folder / f"fmri_{split}_{subject}.npy", np.stack(fmri))
        video_path = folder / f"video_{split}_{config.size}_{hz}.npy"
        if video_path.exists():
            continue
        videos = [
            read_video(
                root / "stimuli" / f"{s.name}.mp4",
                n_trs=config.segment_trs,
                tr=config.tr,
                fps=config.arrays_fps,
                size=config.size,
            )
            for s in chosen
        ]
        np.save(video_path, np.stack(videos))
        per_tr = videos[0].shape[1]
        text = np.asarray([[[c] * per_tr for c in s.captions] for s in chosen], dtype=str)
        np.save(folder / f"text_{split}_{hz}.npy", text)
