"""Shared fixtures: real-looking clips from scikit-image's sample images and tiny random transformers models saved
to a temporary folder (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import NUM_LABELS, TINY, real_clips


@pytest.fixture(scope="session")
def clips() -> np.ndarray:
    return real_clips()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of a tiny ViTForImageClassification, VideoMAEForVideoClassification and CLIPModel (random weights)."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_labels=NUM_LABELS, **TINY))
    videomae = VideoMAEForVideoClassification(
        VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=NUM_LABELS, **TINY)
    )
    text = {"vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"image_size": 32, "patch_size": 8, **TINY}
    clip = CLIPModel(CLIPConfig(text_config={**text, **TINY}, vision_config=vision, projection_dim=16))
    paths = {"vit": root / "vit", "videomae": root / "videomae", "clip": root / "clip"}
    for name, model in (("vit", vit), ("videomae", videomae), ("clip", clip)):
        model.save_pretrained(paths[name])
    return paths
