"""``tiny-decoder`` — distil the attention-free :class:`~mindvideo.models.tiny_decoder.TinyDecoder` from a VAE decoder.

Every training frame is encoded once by the frozen VAE (the posterior mean, i.e. what ``vae.decode`` takes) and
decoded by the VAE decoder; the pairs (latent, VAE image) are cached, so training runs only the tiny network. Loss:
L1 (or MSE) between the tiny decoder's image and the VAE decoder's, plus ``frame_weight`` × the same distance to the
true frame (TAESD-style distillation without the adversarial term). Validation reports, on held-out frames of the
test split, the distance and PSNR to the VAE decoder's images and the PSNR of both decoders to the true frames, and
writes ground truth | VAE | tiny grids.

Output: ``OUT/model/tiny_decoder/`` — copy it into the checkpoint the VAE came from (``CKPT/tiny_decoder``) to use
``--decoder tiny``.
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

from mindvideo.checkpoint import save_component
from mindvideo.errors import MindVideoError
from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from mindvideo.train import diffusion as dm
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.tracking import write_grid

log = logging.getLogger(__name__)

LOSSES = ("l1", "mse")


@dataclasses.dataclass
class TinyDecoderStageConfig(StageConfig):
    """``vae``: the checkpoint whose VAE decoder is distilled (its root, its ``vae/`` folder or a vae stage output).
    ``decoder``: the full tiny-decoder config; unset, :meth:`TinyDecoderConfig.for_vae` builds one from the VAE with
    ``width`` channels and ``blocks`` residual blocks per level (``taper``: halving the width and keeping one block at
    each level after the first, see there). ``max_frames`` > 0 caches only that many evenly
    spaced training frames (the cache holds a latent and a uint8 VAE image per frame)."""

    stage = "tiny-decoder"
    vae: str | None = None
    decoder: TinyDecoderConfig | None = None
    width: int = 64
    blocks: int = 3
    taper: bool = False
    loss: str = "l1"
    frame_weight: float = 0.0
    max_frames: int = 0
    val_clips: int = 4

    def validate(self) -> None:
        super().validate()
        check_all(
            [
                (bool(self.vae), "vae (the checkpoint, its vae/ folder or a vae stage output)", self.vae),
                (self.loss in LOSSES, f"loss among {list(LOSSES)}", self.loss),
                (self.frame_weight >= 0, "frame_weight ≥ 0", self.frame_weight),
                (self.width >= 1 and self.blocks >= 0, "width ≥ 1 and blocks ≥ 0", (self.width, self.blocks)),
                (self.max_frames >= 0 and self.val_clips >= 1, "max_frames ≥ 0, val_clips ≥ 1", self.max_frames),
            ]
        )
        if self.decoder is not None:
            try:
                self.decoder.validate()
            except ValueError as exc:
                raise MindVideoError("expected a valid decoder config", str(exc), "fix decoder.*") from None

    @classmethod
    def tiny(cls) -> TinyDecoderStageConfig:
        return cls(train=TrainConfig(steps=3, batch_size=8, lr=3e-3, log_every=1), width=8, blocks=1, val_clips=2)

    @classmethod
    def demo(cls) -> TinyDecoderStageConfig:
        """For the demo VAE (32-pixel frames): tapered from 32 channels and 2 blocks at the latent level, (32, 16, 8)
        channels; CPU minutes."""
        train = TrainConfig(
            steps=4000, batch_size=32, lr=2e-3, warmup_steps=50, weight_decay=0.0, min_lr_ratio=0.05, threads=1
        )
        return cls(train=train, width=32, blocks=2, taper=True)

    @classmethod
    def reference(cls) -> TinyDecoderStageConfig:
        """SD-1.5's VAE at 256²: the default decoder (64 channels, 3 blocks; ~22 GFLOP per frame, ~1/28 of the
        VAE decoder)."""
        train = TrainConfig(
            steps=100_000,
            batch_size=32,
            lr=5e-4,
            warmup_steps=1000,
            weight_decay=0.0,
            min_lr_ratio=0.1,
            ema_decay=0.999,
            precision="bf16",
            val_every=5000,
            save_every=5000,
        )
        return cls(train=train, max_frames=200_000)


class TinyDecoderObjective(Objective):
    def __init__(self, decoder: TinyDecoder, loss: str, frame_weight: float):
        super().__init__()
        self.decoder, self.loss, self.frame_weight = decoder, loss, frame_weight

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target) if self.loss == "l1" else F.mse_loss(pred, target)

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.decoder(batch["latent"].float()).float()  # (b, 3, H, W) in [-1, 1]
        to_vae = self.distance(pred, to_signed(batch["target"]))
        if self.frame_weight == 0:
            return to_vae, {"to_vae": to_vae.detach()}
        to_frame = self.distance(pred, to_signed(batch["frame"]))
        return to_vae + self.frame_weight * to_frame, {"to_vae": to_vae.detach(), "to_frame": to_frame.detach()}


class TinyDecoderStage(Stage):
    name = "tiny-decoder"
    config_class = TinyDecoderStageConfig
    summary = "Distil a tiny attention-free decoder from the checkpoint's VAE decoder (for --decoder tiny)."

    def build(self) -> TinyDecoderObjective:
        cfg: TinyDecoderStageConfig = self.config
        self.vae = dm.load_stage_vae(cfg.vae).to(self.device)
        self.decoder_config = cfg.decoder or TinyDecoderConfig.for_vae(
            self.vae.config, cfg.width, cfg.blocks, cfg.taper
        )
        check_fits(self.decoder_config, self.vae.config)
        # 1. training pairs: latent (posterior mean) → the VAE decoder's image, cached once
        train = load_split(self.data, "train", video=True)
        frames = flat_frames(train.video, cfg.max_frames)
        latents, targets = vae_pairs(self.vae, frames, self.device)
        self.train_set = ArrayDataset({"latent": latents, "target": targets, "frame": frames})
        # 2. held-out clips of the test split (every other window: distinct clips)
        test = load_split(self.data, "test", video=True)
        self.val_video = np.asarray(test.video[: cfg.val_clips * 2 : 2])  # (n, F, H, W, 3)
        self.val_latents, self.val_targets = vae_pairs(self.vae, flat_frames(self.val_video), self.device)
        self.vae_psnr = psnr(self.val_targets, flat_frames(self.val_video))
        self.vae = None  # frozen and cached: free it before training
        return TinyDecoderObjective(TinyDecoder(self.decoder_config), cfg.loss, cfg.frame_weight)

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def validate(self, objective: TinyDecoderObjective, step: int, out: Path) -> dict[str, float]:
        decoder = objective.decoder
        latents = torch.from_numpy(self.val_latents).to(self.device)
        pred = torch.cat([decoder(latents[s : s + 64]).float().cpu() for s in range(0, len(latents), 64)])
        images = to_uint8(pred)  # (N, H, W, 3)
        targets = torch.from_numpy(self.val_targets)
        metrics = {
            "distance_to_vae": float(objective.distance(pred, to_signed(targets))),
            "psnr_to_vae": psnr(images, self.val_targets),
            "psnr_to_frames": psnr(images, flat_frames(self.val_video)),
            "vae_psnr_to_frames": self.vae_psnr,
        }
        if self.info.is_main:
            shape = self.val_video.shape
            rows = [
                [gt, vae, tiny]
                for gt, vae, tiny in zip(self.val_video, self.val_targets.reshape(shape), images.reshape(shape))
            ]
            write_grid(out / "samples" / f"tiny-decoder-step{step:07d}.gif", rows, fps=shape[1] / 2.0)
        return metrics

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        decoder = TinyDecoder(self.decoder_config)
        decoder.load_state_dict(substate(state, "decoder"))
        save_component(decoder, folder / "tiny_decoder")

    def describe(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in TinyDecoder(self.decoder_config).parameters())
        return {
            "vae": str(self.config.vae),
            "frames": len(self.train_set),
            "decoder": self.decoder_config.to_dict(),
            "parameters": parameters,
        }


# --------------------------------------------------------------------------------------------------- helpers


def check_fits(config: TinyDecoderConfig, vae_config) -> None:
    """The tiny decoder must take the VAE's latents and upsample by the VAE's factor."""
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    if config.latent_channels != vae_config.latent_channels or config.factor != factor:
        raise MindVideoError(
            f"expected a tiny decoder for {vae_config.latent_channels} latent channels and {factor}× upsampling "
            "(the VAE's)",
            f"{config.latent_channels} channels, {config.factor}×",
            f"give decoder.channels {len(vae_config.block_out_channels)} entries, or leave decoder unset",
        )


def flat_frames(video: np.ndarray, limit: int = 0) -> np.ndarray:
    """Clips ``(N, F, H, W, 3)`` → frames ``(N·F, H, W, 3)`` uint8; ``limit`` > 0 keeps that many, evenly spaced."""
    frames = video.reshape(-1, *video.shape[2:])
    if 0 < limit < len(frames):
        frames = frames[np.linspace(0, len(frames) - 1, limit).round().astype(int)]
    return np.ascontiguousarray(frames)


@torch.no_grad()
def vae_pairs(vae, frames: np.ndarray, device: torch.device, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames ``(N, H, W, 3)`` → posterior means ``(N, C, h, w)`` float32 (unscaled: ``vae.decode``'s input) and
    the VAE decoder's images of them ``(N, H, W, 3)`` uint8."""
    latents, images = [], []
    for s in range(0, len(frames), batch):
        x = to_signed(torch.from_numpy(np.array(frames[s : s + batch])).to(device))
        mean = vae.encode(x).latent_dist.mean
        latents.append(mean.float().cpu())
        images.append(to_uint8(vae.decode(mean).sample.float().cpu()))
    return torch.cat(latents).numpy(), np.concatenate(images)


def to_signed(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` → float ``(N, 3, H, W)`` in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] → uint8 ``(N, H, W, 3)`` (the pipeline's rounding)."""
    unit = (images.float() / 2 + 0.5).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))
