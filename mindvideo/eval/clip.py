"""CLIP image-embedding metrics: reconstruction ↔ ground-truth similarity and adjacent-frame similarity.

* **CLIP similarity** — cosine similarity of the CLIP image embeddings of each reconstructed frame and the
  ground-truth frame at the same position (the reference's ``clip_score``: ``image_embeds`` of a CLIP vision model
  with projection).
* **CLIP-pcc (adjacent-frame CLIP similarity)** — the number later papers (e.g. NeuroClips) report as
  "CLIP-pcc": the mean cosine similarity between the embeddings of *consecutive reconstructed frames*. It measures
  temporal smoothness only and never sees the ground truth; we also report it for the ground truth, the level a
  perfect reconstruction would reach.

The model is a local ``transformers.CLIPModel`` (or ``CLIPVisionModelWithProjection``) folder; image embeddings
are ``visual_projection(vision_model(pixels).pooler_output)``, L2-normalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.errors import MindVideoError
from mindvideo.eval.classifiers import from_pretrained, image_processor, model_config
from mindvideo.eval.metrics import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ClipEmbedder:
    """CLIP image embeddings: ``(M, H, W, 3)`` uint8 → ``(M, D)`` float64 unit vectors."""

    model: torch.nn.Module  # has .vision_model and .visual_projection
    processor: Any
    device: str = "cpu"
    batch_size: int = 32
    progress: bool = True

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        starts = range(0, len(frames), self.batch_size)
        for s in progress_bar(starts, "CLIP embed", self.progress):
            inputs = self.processor(images=list(frames[s : s + self.batch_size]), return_tensors="pt")
            pooled = self.model.vision_model(pixel_values=inputs["pixel_values"].to(self.device)).pooler_output
            embeds = self.model.visual_projection(pooled).float()
            out.append(torch.nn.functional.normalize(embeds, dim=-1).cpu())
        return torch.cat(out).double().numpy()


def load_clip(path: str | Path, *, device: str = "cpu", batch_size: int = 32, progress: bool = True) -> ClipEmbedder:
    """A local CLIP folder (``model_type`` ``clip`` or ``clip_vision_model``) as an image embedder; preprocessing
    from its ``preprocessor_config.json``, else CLIP's default (shortest edge → image size, centre crop)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    config = model_config(path, "CLIP model", "--clip")
    classes = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModelWithProjection}
    if config.get("model_type") not in classes:
        raise MindVideoError(
            f"expected a CLIPModel folder at {path}",
            f"model_type {config.get('model_type')!r}",
            "pass --clip a CLIP model saved with save_pretrained",
        )
    model = from_pretrained(classes[config["model_type"]], path, "CLIP model").to(device).eval()
    size = int(getattr(model.config, "vision_config", model.config).image_size)
    processor = image_processor(
        CLIPImageProcessor, path, size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return ClipEmbedder(model, processor, device=device, batch_size=batch_size, progress=progress)


def embed_videos(videos: np.ndarray, embedder: ClipEmbedder) -> np.ndarray:
    """``(N, F, H, W, 3)`` uint8 → ``(N, F, D)`` unit embeddings."""
    n, f = videos.shape[:2]
    return embedder(videos.reshape(n * f, *videos.shape[2:])).reshape(n, f, -1)


def clip_similarity(pred_embeds: np.ndarray, gt_embeds: np.ndarray) -> np.ndarray:
    """Cosine similarity per frame of unit embeddings ``(N, F, D)`` × 2 → ``(N, F)``."""
    return np.einsum("nfd,nfd->nf", pred_embeds, gt_embeds)


def adjacent_similarity(embeds: np.ndarray) -> np.ndarray:
    """CLIP-pcc (adjacent-frame CLIP similarity) per clip: mean over f of cos(e_f, e_f+1), ``(N, F, D)`` → ``(N,)``
    (NaN for single-frame clips)."""
    if embeds.shape[1] < 2:
        return np.full(embeds.shape[0], np.nan)
    return np.einsum("nfd,nfd->nf", embeds[:, :-1], embeds[:, 1:]).mean(axis=1)
