"""Parameter counts and configs of checkpoints and preset sizes (``mindvideo info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindvideo.checkpoint import load_components
from mindvideo.models import FMRIEncoder, FMRIEncoderConfig, VideoUNet, VideoUNetConfig


def count(module: nn.Module, predicate=lambda name: True) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if predicate(name))


def describe_unet(unet: VideoUNet) -> dict[str, Any]:
    temporal = count(unet, lambda n: "_temp." in n)
    return {
        "parameters": count(unet),
        "breakdown": {"image (SD) layers": count(unet) - temporal, "temporal layers": temporal},
        "config": unet.config.to_dict(),
    }


def describe_encoder(encoder: FMRIEncoder) -> dict[str, Any]:
    return {"parameters": count(encoder), "config": encoder.config.to_dict()}


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    parts = load_components(path)
    vae = parts["vae"]
    return {
        "fmri_encoder": describe_encoder(parts["fmri_encoder"]),
        "unet": describe_unet(parts["unet"]),
        "vae": {"parameters": count(vae), "config": {k: v for k, v in vae.config.items() if not k.startswith("_")}},
        "scheduler": {"parameters": 0, "config": parts["scheduler_config"]},
    }


def describe_preset(preset: str) -> dict[str, Any]:
    """Build the preset's networks on the meta device (no memory, no weights) and count."""
    enc_cfg = FMRIEncoderConfig.tiny() if preset == "tiny" else FMRIEncoderConfig()
    unet_cfg = VideoUNetConfig.tiny() if preset == "tiny" else VideoUNetConfig.sd15()
    with torch.device("meta"):
        return {"fmri_encoder": describe_encoder(FMRIEncoder(enc_cfg)), "unet": describe_unet(VideoUNet(unet_cfg))}
