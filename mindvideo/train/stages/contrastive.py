"""Stage 2 — multimodal contrastive learning of the fMRI encoder (MinD-Video §3.2).

The encoder (with spatiotemporal attention), initialised from MBM, maps each window to its condition tokens
``(L, D)``; their mean, projected to CLIP's embedding width when the two differ, is pulled towards the CLIP image
embedding of a frame of the window's clip and the CLIP text embedding of its caption with symmetric InfoNCE and the
encoder's learned temperature (``logit_scale``). CLIP is frozen; its embeddings of every training frame and caption
are computed once.
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
from torch import nn

from mindvideo.checkpoint import find_weights, load_fmri_encoder, read_state_dict, save_component
from mindvideo.models import FMRIEncoder, FMRIEncoderConfig
from mindvideo.train.checkpointing import resolve_component
from mindvideo.train.clip_models import LocalCLIP, info_nce
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split
from mindvideo.train.stages.base import Objective, Stage, encoder_backbone_state, freeze, substate
from mindvideo.train.stages.mbm import demo_encoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ContrastiveConfig(StageConfig):
    """``encoder`` None: the config of ``init_encoder`` (without its MBM decoder). ``clip``: a CLIPModel folder or
    a ``clip`` stage output."""

    stage = "contrastive"
    clip: str | None = None
    init_encoder: str | None = None  # an mbm output (or any fmri_encoder folder); its backbone is loaded
    encoder: FMRIEncoderConfig | None = None
    image_weight: float = 1.0
    text_weight: float = 1.0  # 0 (or no captions in the data): image targets only
    val_windows: int = 80

    def validate(self) -> None:
        super().validate()
        check_all(
            [
                (bool(self.clip), "clip (a CLIPModel folder or a clip stage output)", self.clip),
                (self.encoder is not None or bool(self.init_encoder), "encoder or init_encoder", self.init_encoder),
                (
                    min(self.image_weight, self.text_weight) >= 0,
                    "image_weight, text_weight ≥ 0",
                    (self.image_weight, self.text_weight),
                ),
                (
                    self.image_weight + self.text_weight > 0,
                    "image_weight + text_weight > 0",
                    (self.image_weight, self.text_weight),
                ),
                (self.val_windows >= 2, "val_windows ≥ 2", self.val_windows),
            ]
        )

    @classmethod
    def tiny(cls) -> ContrastiveConfig:
        return cls(
            train=TrainConfig(steps=3, batch_size=8, lr=1e-3, log_every=1),
            encoder=FMRIEncoderConfig.tiny().replace(depth=1),
            val_windows=8,
        )

    @classmethod
    def demo(cls) -> ContrastiveConfig:
        train = TrainConfig(steps=400, batch_size=32, lr=1e-3, weight_decay=0.05, warmup_steps=40, threads=1)
        return cls(train=train, encoder=demo_encoder())

    @classmethod
    def reference(cls) -> ContrastiveConfig:
        """The full-size encoder against CLIP ViT-L/14 (SD-1.5's text encoder's CLIP): 77 × 768 tokens."""
        train = TrainConfig(
            steps=20_000, batch_size=128, lr=1e-4, weight_decay=0.05, warmup_steps=1000, precision="bf16"
        )
        return cls(train=train, clip=None, init_encoder=None, encoder=FMRIEncoderConfig(mlp_ratio=1.0))


class ContrastiveObjective(Objective):
    """Encoder + (when widths differ) a linear map to CLIP's embedding width, used during this stage only."""

    def __init__(self, encoder: FMRIEncoder, projection_dim: int, image_weight: float, text_weight: float):
        super().__init__()
        self.encoder = encoder
        out_dim = encoder.config.out_dim
        self.head = nn.Identity() if out_dim == projection_dim else nn.Linear(out_dim, projection_dim, bias=False)
        self.image_weight, self.text_weight = image_weight, text_weight
        freeze(encoder, ("",))
        for name in ("cls_token", "pos_embed"):
            getattr(encoder, name).requires_grad_(False)

    def embed(self, fmri: torch.Tensor) -> torch.Tensor:
        """(B, W, V) → L2-normalised (B, P): the mean of the condition tokens, projected."""
        return F.normalize(self.head(self.encoder(fmri).mean(dim=1)).float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.embed(batch["fmri"])
        scale = self.encoder.logit_scale
        frames = batch["image_embeds"]  # (b, F, P): one random frame per window
        image = frames[torch.arange(len(frames), device=frames.device), rng.randint("frame", frames.shape[1])]
        logs: dict[str, torch.Tensor] = {"temperature": 1.0 / scale.exp().detach()}
        loss = f.new_zeros(())
        if self.image_weight > 0:
            logs["image_nce"] = info_nce(f, image, scale)
            loss = loss + self.image_weight * logs["image_nce"]
        if self.text_weight > 0:
            logs["text_nce"] = info_nce(f, batch["text_embeds"], scale)
            loss = loss + self.text_weight * logs["text_nce"]
        return loss, {k: v.detach() for k, v in logs.items()}


class ContrastiveStage(Stage):
    name = "contrastive"
    config_class = ContrastiveConfig
    summary = "Align the fMRI encoder with CLIP image and text embeddings (symmetric InfoNCE)."

    def build(self) -> ContrastiveObjective:
        cfg: ContrastiveConfig = self.config
        train = load_split(self.data, "train", video=True)
        text_weight = cfg.text_weight if train.captions else 0.0
        if train.captions is None and cfg.text_weight > 0:
            log.warning("no captions in %s: training against image embeddings only", self.data)
        self.clip_path = resolve_component(cfg.clip, "clip", ("clip",), "clip")
        clip = LocalCLIP.from_folder(self.clip_path).to(self.device)
        self.train_set = ArrayDataset(self._targets(clip, train, text_weight > 0))
        self.val = self._targets(clip, _val(self.data, cfg.val_windows), text_weight > 0)
        encoder = self._encoder(int(train.fmri.shape[2]), int(train.fmri.shape[1]))
        return ContrastiveObjective(encoder, clip.projection_dim, cfg.image_weight, text_weight)

    def _targets(self, clip: LocalCLIP, split, text: bool) -> dict[str, np.ndarray]:
        """fMRI windows with CLIP embeddings of every frame (N, F, P) and, with ``text``, of captions (N, P)."""
        n, f = split.video.shape[:2]
        frames = torch.from_numpy(np.array(split.video).reshape(n * f, *split.video.shape[2:])).to(self.device)
        out = {
            "fmri": np.asarray(split.fmri, dtype=np.float32),
            "image_embeds": clip.image_embeds(frames).reshape(n, f, -1).cpu().numpy(),
        }
        if text:
            unique, ids = np.unique(np.asarray(split.captions), return_inverse=True)
            out["text_embeds"] = clip.text_embeds(list(unique)).cpu().numpy()[ids]
        return out

    def _encoder(self, voxels: int, window: int) -> FMRIEncoder:
        cfg: ContrastiveConfig = self.config
        source = None
        if cfg.init_encoder:
            folder = resolve_component(cfg.init_encoder, "fmri_encoder", ("mbm",), "init_encoder")
            source = read_state_dict(find_weights(folder))
            base = cfg.encoder or load_fmri_encoder(folder).config
        else:
            base = cfg.encoder
        self.encoder_config = base.replace(num_voxels=voxels, window_size=window, decoder_depth=0)
        encoder = FMRIEncoder(self.encoder_config)
        if source is not None:
            state = encoder_backbone_state(encoder, source)
            encoder.load_state_dict(state, strict=False)
            log.info("initialised the encoder backbone from %s (%d tensors)", cfg.init_encoder, len(state))
        return encoder

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def validate(self, objective: ContrastiveObjective, step: int, out: Path) -> dict[str, float]:
        """Top-1 retrieval among the validation windows: fMRI → middle frame, fMRI → caption."""
        f = objective.embed(torch.from_numpy(self.val["fmri"]).to(self.device))
        image = torch.from_numpy(self.val["image_embeds"][:, self.val["image_embeds"].shape[1] // 2]).to(self.device)
        metrics = {"fmri_to_image_top1": _top1(f, image), "chance": 1.0 / len(f)}
        if "text_embeds" in self.val:
            metrics["fmri_to_text_top1"] = _top1(f, torch.from_numpy(self.val["text_embeds"]).to(self.device))
        return metrics

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        encoder = FMRIEncoder(self.encoder_config)
        encoder.load_state_dict(substate(state, "encoder"))
        save_component(encoder, folder / "fmri_encoder")

    def describe(self) -> dict[str, Any]:
        return {"clip": str(self.clip_path), "windows": len(self.train_set), "encoder": self.encoder_config.to_dict()}


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows of ``a`` whose most similar row of ``b`` is the matching one (identical targets count)."""
    best = (a @ b.T).argmax(dim=1)
    return float(((b[best] - b).norm(dim=1) < 1e-6).float().mean())


def _val(root: Path, count: int):
    """Up to ``count`` test windows, every other one (consecutive windows overlap)."""
    test = load_split(root, "test", video=True)
    index = np.arange(0, len(test), 2)[:count]
    return dataclasses.replace(
        test,
        fmri=np.asarray(test.fmri[index]),
        video=np.asarray(test.video[index]),
        captions=None if test.captions is None else [test.captions[i] for i in index],
    )
