"""The stage interface the trainer drives, and helpers every stage shares.

A stage turns a config and a data folder into

* an **objective** — an ``nn.Module`` whose ``forward(batch, rng)`` returns ``(loss, logs)``; it holds only the
  networks being trained (frozen helpers such as the VAE or CLIP stay outside it, and their outputs are cached in
  the dataset), and every parameter that requires a gradient gets one;
* a map-style **dataset** of tensors;
* **validation** (metrics and sample grids, run on every rank; only rank 0 writes);
* an **export** of the trained networks from a full state dict of the objective.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.utils.data as tud
from torch import nn

from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder
from mindvideo.train.config import StageConfig
from mindvideo.train.data import StepRandom
from mindvideo.train.distributed import DistInfo

log = logging.getLogger(__name__)


class Objective(nn.Module):
    """The trained networks and their loss. Subclasses implement :meth:`forward`. ``evolving_state``: state-dict
    prefixes of frozen state that the objective updates itself (an EMA target network), saved in the resumable
    checkpoints with the trainable parameters."""

    evolving_state: ClassVar[tuple[str, ...]] = ()

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the activations of the encoder's and the UNet's transformer blocks in the backward pass (less
        memory, ~30 % more compute). Stages with other networks override this."""
        from mindvideo.models.attention import VideoTransformer

        for module in self.modules():
            if isinstance(module, (FMRIEncoder, VideoTransformer)):
                module.gradient_checkpointing = enabled


class Stage(ABC):
    """One step of progressive training (MinD-Video §3)."""

    name: ClassVar[str]
    config_class: ClassVar[type[StageConfig]]
    summary: ClassVar[str] = ""

    def __init__(self, config: StageConfig, data: str | Path, info: DistInfo | None = None):
        if not isinstance(config, self.config_class):
            raise MindVideoError(
                f"expected a {self.config_class.__name__} for stage {self.name!r}", type(config).__name__
            )
        self.config, self.data, self.info = config, Path(data), info or DistInfo()

    @property
    def device(self) -> torch.device:
        return self.info.device

    @abstractmethod
    def build(self) -> Objective:
        """Load data and inputs (raising :class:`MindVideoError` for anything wrong), build the objective."""

    @abstractmethod
    def dataset(self) -> tud.Dataset:
        """The training samples (after :meth:`build`)."""

    @abstractmethod
    def validate(self, objective: Objective, step: int, out: Path) -> dict[str, float]:
        """Validation metrics at ``step``; rank 0 also writes sample grids under ``out/samples``."""

    @abstractmethod
    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Write the trained networks from the objective's full state dict into ``folder`` (rank 0 only)."""

    def shard_units(self, objective: Objective) -> list[nn.Module]:
        """Modules FSDP shards one by one (empty: the stage does not support FSDP)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Facts about the data and inputs, recorded in ``stage.json``."""
        return {}


# --------------------------------------------------------------------------------------------------- helpers


def substate(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` under ``prefix.`` with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def freeze(module: nn.Module, patterns: tuple[str, ...] | None = None) -> int:
    """Freeze ``module``; with ``patterns``, re-enable parameters whose name contains any of them. Returns the
    number of trainable parameters."""
    for name, p in module.named_parameters():
        p.requires_grad_(patterns is not None and any(s in name for s in patterns))
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def encoder_backbone_state(encoder: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parts of an encoder state dict that carry over between voxel counts and stages: patch embedding, blocks,
    final norm and the learned temperature (the projection head depends on the voxel count, the MBM decoder on
    pre-training only)."""
    own = encoder.state_dict()
    keep = {}
    for key, value in source.items():
        if key.startswith(("decoder.", "proj_head.", "pos_embed")) or key not in own:
            continue
        if own[key].shape != value.shape:
            raise MindVideoError(
                f"expected the initial encoder's {key} to have shape {tuple(own[key].shape)}",
                f"{tuple(value.shape)}",
                "use an encoder config with the same embed_dim, depth, heads and patch size as the initial one",
            )
        keep[key] = value
    return keep
