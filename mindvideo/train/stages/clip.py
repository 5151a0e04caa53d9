"""Small-data stage — train a tiny CLIP-like image/text pair on the stimulus frames and their captions.

Real CLIP/SD weights cannot be downloaded everywhere (and do not fit a 2-core CPU); this stage gives the contrastive
stage its image/text targets and the text-tuning stage its text encoder. The result is a ``transformers``
``CLIPModel`` folder with a word-level tokenizer, loaded by every later stage exactly as a real CLIP would be.
Loss: symmetric InfoNCE between a random frame of each clip and the clip's caption.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as tud

from mindvideo.train.clip_models import LocalCLIP, build_tiny_clip, image_settings, info_nce, preprocess, save_clip
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.tracking import write_grid

log = logging.getLogger(__name__)


def tiny_clip_settings(width: int = 32, text_width: int = 32, projection: int = 32) -> dict[str, Any]:
    """Two-layer ViT (8-pixel patches) and two-layer text transformer."""
    return {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "patch_size": 8,
        },
        "text_config": {
            "hidden_size": text_width,
            "intermediate_size": 2 * text_width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        "projection_dim": projection,
    }


@dataclasses.dataclass
class ClipConfig(StageConfig):
    """``clip``: ``CLIPConfig`` keywords (``vision_config.image_size`` is set to the frame size)."""

    stage = "clip"
    clip: dict[str, Any] = dataclasses.field(default_factory=tiny_clip_settings)
    max_length: int = 16
    val_clips: int = 64

    def validate(self) -> None:
        super().validate()
        check_all(
            [
                (self.max_length >= 4, "max_length ≥ 4", self.max_length),
                (self.val_clips >= 2, "val_clips ≥ 2", self.val_clips),
            ]
        )

    @classmethod
    def tiny(cls) -> ClipConfig:
        return cls(train=TrainConfig(steps=3, batch_size=8, lr=1e-3, log_every=1), val_clips=8)

    @classmethod
    def demo(cls) -> ClipConfig:
        train = TrainConfig(steps=400, batch_size=32, lr=2e-3, weight_decay=0.1, warmup_steps=40, betas=(0.9, 0.98))
        return cls(train=train, clip=tiny_clip_settings(64, 64, 64))

    @classmethod
    def reference(cls) -> ClipConfig:
        """MinD-Video uses the pretrained CLIP ViT-L/14 instead; this trains a ViT-B/32-sized pair from scratch."""
        settings = {
            "vision_config": {"hidden_size": 768, "num_hidden_layers": 12, "patch_size": 32},
            "text_config": {"hidden_size": 512, "num_hidden_layers": 12},
            "projection_dim": 512,
        }
        return cls(
            train=TrainConfig(steps=100_000, batch_size=256, lr=5e-4, warmup_steps=2000, precision="bf16"),
            clip=settings,
            max_length=77,
        )


class ClipObjective(Objective):
    def __init__(self, model: torch.nn.Module, image: dict[str, Any]):
        super().__init__()
        self.model, self.image = model, image

    def embed(self, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (B, H, W, 3) and tokens (B, L) → normalised image and text embeddings (B, P) each."""
        m = self.model
        image = m.visual_projection(m.vision_model(pixel_values=preprocess(frames, self.image)).pooler_output)
        text = m.text_projection(m.text_model(input_ids=ids, attention_mask=mask).pooler_output)
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video = batch["video"]  # (b, F, H, W, 3)
        pick = rng.randint("frame", video.shape[1])  # one random frame per clip
        frames = video[torch.arange(len(video), device=video.device), pick]
        image, text = self.embed(frames, batch["input_ids"], batch["attention_mask"])
        loss = info_nce(image, text, self.model.logit_scale)
        return loss, {"temperature": 1.0 / self.model.logit_scale.exp().detach()}


class ClipStage(Stage):
    name = "clip"
    config_class = ClipConfig
    summary = "Train a tiny CLIP-like image/text pair on the stimulus frames and captions (small-data path)."

    def build(self) -> ClipObjective:
        cfg: ClipConfig = self.config
        train = load_split(self.data, "train", video=True, captions=True)
        self.frame_size = int(train.video.shape[2])
        settings = dict(cfg.clip)
        settings["vision_config"] = {**settings.get("vision_config", {}), "image_size": self.frame_size}
        model, self.tokenizer = build_tiny_clip(train.captions, settings, cfg.max_length, cfg.train.seed)
        self.clip_config, self.image = model.config, image_settings(None, self.frame_size)
        tokens = self.tokenizer(train.captions, padding="max_length", max_length=cfg.max_length, truncation=True)
        self.train_set = ArrayDataset(
            {
                "video": train.video,
                "input_ids": np.asarray(tokens["input_ids"], np.int64),
                "attention_mask": np.asarray(tokens["attention_mask"], np.int64),
            }
        )
        self.val = _val_split(self.data, cfg.val_clips)
        return ClipObjective(model, self.image)

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def validate(self, objective: ClipObjective, step: int, out: Path) -> dict[str, float]:
        video, captions = self.val
        frames = torch.from_numpy(video[:, video.shape[1] // 2]).to(self.device)  # middle frame of each clip
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=self.config.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        image, text = objective.embed(frames, tokens["input_ids"], tokens["attention_mask"])
        similarity = image @ text.T  # (N, N)
        same = torch.tensor([[a == b for b in captions] for a in captions], device=self.device)
        hits = same[torch.arange(len(captions)), similarity.argmax(dim=1)]  # identical captions count as correct
        if self.info.is_main:
            rows = [[v] for v in video[:4]]
            write_grid(out / "samples" / f"clip-step{step:07d}.gif", rows)
        return {"image_to_text_top1": float(hits.float().mean()), "chance": 1.0 / len(captions)}

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        from transformers import CLIPModel

        model = CLIPModel(self.clip_config)
        model.load_state_dict(substate(state, "model"))
        (folder / "clip").mkdir(parents=True)
        save_clip(model, self.tokenizer, folder / "clip", self.frame_size)
        LocalCLIP.from_folder(folder / "clip")  # the exported folder loads as a real CLIP would

    def describe(self) -> dict[str, Any]:
        return {"frame_size": self.frame_size, "vocabulary": len(self.tokenizer), "clips": len(self.train_set)}


def _val_split(root: Path, count: int) -> tuple[np.ndarray, list[str]]:
    """Up to ``count`` test clips (every other window, so clips differ) with their captions."""
    test = load_split(root, "test", video=True, captions=True)
    index = np.arange(0, len(test), 2)[:count]
    return np.asarray(test.video[index]), [test.captions[i] for i in index]
