"""The training stages, by CLI name: the small-data helpers (``vae``, ``clip``) and MinD-Video's progressive
stages (``mbm`` → ``contrastive`` → ``unet-text`` → ``cotrain``), then the few-step student (``distill``)
and its tiny decoder (``tiny-decoder``)."""

from __future__ import annotations

from mindvideo.train.stages.base import Objective, Stage
from mindvideo.train.stages.clip import ClipConfig, ClipStage
from mindvideo.train.stages.contrastive import ContrastiveConfig, ContrastiveStage
from mindvideo.train.stages.cotrain import CotrainConfig, CotrainStage
from mindvideo.train.stages.distill import DistillConfig, DistillStage
from mindvideo.train.stages.mbm import MBMConfig, MBMStage
from mindvideo.train.stages.tiny_decoder import TinyDecoderStage, TinyDecoderStageConfig
from mindvideo.train.stages.unet_text import UNetTextConfig, UNetTextStage
from mindvideo.train.stages.vae import VAEConfig, VAEStage

STAGES: dict[str, type[Stage]] = {
    stage.name: stage
    for stage in (
        VAEStage,
        ClipStage,
        MBMStage,
        ContrastiveStage,
        UNetTextStage,
        CotrainStage,
        DistillStage,
        TinyDecoderStage,
    )
}

__all__ = [
    "STAGES",
    "ClipConfig",
    "ClipStage",
    "ContrastiveConfig",
    "ContrastiveStage",
    "CotrainConfig",
    "CotrainStage",
    "DistillConfig",
    "DistillStage",
    "MBMConfig",
    "MBMStage",
    "Objective",
    "Stage",
    "TinyDecoderStage",
    "TinyDecoderStageConfig",
    "UNetTextConfig",
    "UNetTextStage",
    "VAEConfig",
    "VAEStage",
]
