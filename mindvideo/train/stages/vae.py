"""Small-data stage — train a tiny ``AutoencoderKL`` on the stimulus frames (SD-1.5's VAE stands in at full size).

Loss: pixel MSE + ``kl_weight`` × the KL divergence of the diagonal-Gaussian posterior from N(0, I) (Kingma &
Welling 2014; LDM, Rombach et al. 2022, §3 without the perceptual and adversarial terms, which a 32-pixel toy does
not need). At export the latent scaling factor is set to 1 / std of the training latents, so scaled latents have
unit variance as SD's do (0.18215 for SD-1.5).
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

from mindvideo.checkpoint import tiny_vae_config
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.tracking import write_grid
from mindvideo.weights import write_checksums

log = logging.getLogger(__name__)


def demo_vae_config() -> dict[str, Any]:
    """3 levels (4× down-sampling: 32-pixel frames → 8×8 latents), 4 latent channels, ~0.5 M parameters."""
    return {
        **tiny_vae_config(),
        "block_out_channels": (24, 48, 48),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "sample_size": 32,
    }


@dataclasses.dataclass
class VAEConfig(StageConfig):
    """``vae``: diffusers ``AutoencoderKL`` keyword arguments."""

    stage = "vae"
    vae: dict[str, Any] = dataclasses.field(default_factory=tiny_vae_config)
    kl_weight: float = 1e-4
    val_clips: int = 4

    def validate(self) -> None:
        super().validate()
        blocks = self.vae.get("block_out_channels", ())
        check_all(
            [
                (self.kl_weight >= 0, "kl_weight ≥ 0", self.kl_weight),
                (len(blocks) >= 1, "vae.block_out_channels with at least one level", blocks),
                (self.val_clips >= 1, "val_clips ≥ 1", self.val_clips),
            ]
        )

    @classmethod
    def tiny(cls) -> VAEConfig:
        return cls(train=TrainConfig(steps=3, batch_size=8, lr=1e-3, log_every=1), val_clips=2)

    @classmethod
    def demo(cls) -> VAEConfig:
        train = TrainConfig(
            steps=600, batch_size=32, lr=2e-3, warmup_steps=30, weight_decay=0.0, min_lr_ratio=0.05, threads=1
        )
        return cls(train=train, vae=demo_vae_config())

    @classmethod
    def reference(cls) -> VAEConfig:
        """SD-1.5's VAE architecture trained from scratch (MinD-Video uses SD-1.5's pretrained VAE instead)."""
        from mindvideo.checkpoint import sd15_vae_config

        train = TrainConfig(steps=200_000, batch_size=64, lr=4.5e-6, precision="bf16", gradient_checkpointing=True)
        return cls(train=train, vae=sd15_vae_config(), kl_weight=1e-6)


class VAEObjective(Objective):
    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["frame"].permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (b, 3, H, W) in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * rng.randn("posterior", *posterior.mean.shape[1:])
        recon = F.mse_loss(self.vae.decode(z).sample.float(), x)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).float().mean()
        return recon + self.kl_weight * kl, {"recon_mse": recon.detach(), "kl": kl.detach()}

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.vae.enable_gradient_checkpointing()
        else:
            self.vae.disable_gradient_checkpointing()


class VAEStage(Stage):
    name = "vae"
    config_class = VAEConfig
    summary = "Train a tiny AutoencoderKL on the stimulus frames (small-data path)."

    def build(self) -> VAEObjective:
        from diffusers import AutoencoderKL

        cfg: VAEConfig = self.config
        train = load_split(self.data, "train", video=True)
        n, f, h, w, _ = train.video.shape
        self.frames = train.video.reshape(n * f, h, w, 3)
        self.frame_size = h
        test = load_split(self.data, "test", video=True)
        self.val = np.asarray(test.video[: cfg.val_clips * 2 : 2])  # every other window: distinct clips
        return VAEObjective(AutoencoderKL(**cfg.vae), cfg.kl_weight)

    def dataset(self) -> tud.Dataset:
        return ArrayDataset({"frame": self.frames})

    def validate(self, objective: VAEObjective, step: int, out: Path) -> dict[str, float]:
        vae = objective.vae
        n, f = self.val.shape[:2]
        x = torch.from_numpy(self.val.reshape(n * f, *self.val.shape[2:])).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        mse = float(F.mse_loss(recon, x))
        if self.info.is_main:
            video = ((recon + 1) * 127.5).round().byte().permute(0, 2, 3, 1).reshape(self.val.shape).cpu().numpy()
            write_grid(out / "samples" / f"vae-step{step:07d}.gif", [[g, r] for g, r in zip(self.val, video)])
        return {"recon_mse": mse, "psnr": float(10 * np.log10(4.0 / max(mse, 1e-10)))}

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(**self.config.vae)
        vae.load_state_dict(substate(state, "vae"))
        vae.register_to_config(scaling_factor=latent_scale(vae, self.frames))
        vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        write_checksums(folder / "vae")

    def describe(self) -> dict[str, Any]:
        return {"frames": len(self.frames), "frame_size": self.frame_size}


@torch.no_grad()
def latent_scale(vae, frames: np.ndarray, count: int = 512) -> float:
    """1 / std of the posterior means of up to ``count`` evenly spaced training frames."""
    index = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    x = torch.from_numpy(np.asarray(frames[index])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = torch.cat([vae.encode(x[s : s + 64]).latent_dist.mean for s in range(0, len(x), 64)])
    return float(1.0 / latents.std().clamp(min=1e-6))
