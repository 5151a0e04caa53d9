from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mindvideo.checkpoint import build_random_checkpoint, write_reference_layout


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint in our layout, with every UNet weight (temporal layers too) perturbed."""
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", num_voxels=64, init_scale=0.02)


@pytest.fixture(scope="session")
def reference_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    """The same weights in the reference MinD-Video layout (3-D block names, .bin / model.pth)."""
    return write_reference_layout(tiny_ckpt, tmp_path_factory.mktemp("ref") / "ckpt")


@pytest.fixture
def fmri_file(tmp_path) -> Path:
    path = tmp_path / "fmri.npy"
    np.save(path, np.random.default_rng(1).standard_normal((2, 2, 64)).astype(np.float32))
    return path
