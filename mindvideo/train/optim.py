"""Optimiser, learning-rate schedule and EMA of the trainable weights.

* AdamW with weight decay on matrices and convolution kernels only (biases, norms, embeddings and scalars such as
  the learned temperature are not decayed), as in nanoGPT and most ViT/diffusion training code.
* Linear warm-up then cosine decay to ``lr · min_lr_ratio`` (SGDR, Loshchilov & Hutter 2017, without restarts).
* EMA with the usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so early averages are not dominated by the
  random initialisation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from mindvideo.train.config import TrainConfig
from mindvideo.train.distributed import full_tensor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients, in a decayed and a non-decayed group."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))


class EMA:
    """Exponential moving average of named parameters (plain or sharded tensors), kept in fp32."""

    def __init__(self, named: dict[str, nn.Parameter], decay: float):
        self.params, self.decay, self.updates = named, decay, 0
        self.shadow = {k: p.detach().float().clone() for k, p in named.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {k: full_tensor(v).cpu() for k, v in self.shadow.items()}
        out["__updates__"] = torch.tensor(self.updates)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.updates = int(state["__updates__"])
        for k, v in self.shadow.items():
            full = state[k].to(torch.float32)
            if hasattr(v, "device_mesh"):  # an FSDP shard: keep only this rank's piece
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(v.device), v.device_mesh, v.placements)
            v.copy_(full.to(v.device) if not hasattr(full, "device_mesh") else full)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the EMA weights in for the block (validation, export), then restore the live ones."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])
