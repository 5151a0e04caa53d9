"""The fMRI data layer: scanner files → model-ready windows, and a simulated ground-truth dataset.

``load → clean → select voxels → normalise → window``, each stage a small function in :mod:`.preprocess`; the
fitted state lives in :class:`FMRITransform` (saved as ``CKPT/data_transform/``). Layouts (Wen 2018 raw, the
reference's arrays, "my own data", HCP) are read by :mod:`.layouts`, prepared to disk by :func:`prepare` and served
by the datasets in :mod:`.datasets`. :func:`simulate` writes a dataset with known ground truth.
"""

from __future__ import annotations

from mindvideo.data.datasets import HCPStream, LayoutDataset, PreparedDataset
from mindvideo.data.io import (
    FMRIRun,
    LoadConfig,
    VoxelMask,
    load_array,
    load_cifti,
    load_mask,
    load_nifti,
    load_run,
    read_video,
)
from mindvideo.data.layouts import Segment, arrays_segments, custom_segments, hcp_runs, wen_segments
from mindvideo.data.prepare import PrepareConfig, prepare, preprocess_defaults
from mindvideo.data.preprocess import PreprocessConfig
from mindvideo.data.simulate import SimConfig, simulate
from mindvideo.data.transform import FMRITransform

__all__ = [
    "FMRIRun",
    "FMRITransform",
    "HCPStream",
    "LayoutDataset",
    "LoadConfig",
    "PrepareConfig",
    "PreparedDataset",
    "PreprocessConfig",
    "Segment",
    "SimConfig",
    "VoxelMask",
    "arrays_segments",
    "custom_segments",
    "hcp_runs",
    "load_array",
    "load_cifti",
    "load_mask",
    "load_nifti",
    "load_run",
    "prepare",
    "preprocess_defaults",
    "read_video",
    "simulate",
    "wen_segments",
]
