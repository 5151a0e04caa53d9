"""Stage 3 — tune the inflated video UNet on the target videos with text conditioning
(MinD-Video §3.3 after Tune-A-Video).

The UNet (SD-1.5 inflated to video, or a fresh small one) learns the stimulus videos conditioned on their captions'
text-encoder hidden states; which layers train is configurable (MinD-Video tunes the attention layers: sparse-causal
self-attention, cross-attention and the new temporal attention). Captions are replaced by the empty caption with
probability ``cond_dropout`` so text classifier-free guidance works for the validation samples.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from mindvideo.checkpoint import save_component
from mindvideo.models import VideoUNet, VideoUNetConfig
from mindvideo.train import diffusion as dm
from mindvideo.train.checkpointing import resolve_component
from mindvideo.train.clip_models import LocalCLIP
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split, single_chunk
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.tracking import write_grid

log = logging.getLogger(__name__)


def demo_unet() -> VideoUNetConfig:
    """The built-in demo model's UNet: channels (32, 64), 8×8 latents, cross-attention width 64."""
    return VideoUNetConfig.tiny().replace(cross_attention_dim=64)


@dataclasses.dataclass
class VideoValidation:
    """Sampling settings of the validation grids (DDIM)."""

    clips: int = 4
    steps: int = 20
    guidance: float = 3.0


@dataclasses.dataclass
class UNetTextConfig(StageConfig):
    """``init_unet``: a diffusers SD UNet folder (inflated on load) or an earlier unet-text output; without it a
    fresh UNet is built from ``unet``. ``trainable``: groups (``all``, ``attention``, ``self_attention``,
    ``cross_attention``, ``temporal``) or parameter-name substrings."""

    stage = "unet-text"
    vae: str | None = None
    text_encoder: str | None = None
    init_unet: str | None = None
    unet: VideoUNetConfig | None = None
    trainable: tuple[str, ...] = ("attention",)
    cond_dropout: float = 0.1
    snr_gamma: float = 0.0  # > 0: Min-SNR-γ loss weighting (5 is the paper's choice)
    train_frames: int = 0  # > 0: train on random runs of this many consecutive frames
    validation: VideoValidation = dataclasses.field(default_factory=VideoValidation)

    def validate(self) -> None:
        super().validate()
        check_all(
            [
                (bool(self.text_encoder), "text_encoder (a CLIP folder or a clip stage output)", self.text_encoder),
                (self.unet is not None or bool(self.init_unet), "unet or init_unet", self.init_unet),
                *video_diffusion_checks(self),
            ]
        )

    @classmethod
    def tiny(cls) -> UNetTextConfig:
        train = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1)
        unet = VideoUNetConfig.tiny()
        return cls(train=train, unet=unet, trainable=("all",), validation=VideoValidation(1, 2, 2.0))

    @classmethod
    def demo(cls) -> UNetTextConfig:
        """From scratch, so every layer trains (there is no pretrained image model to keep); runs of 3 frames and
        Min-SNR-5 weighting let the small UNet see more clips and converge faster on a CPU."""
        train = TrainConfig(
            steps=2000,
            batch_size=16,
            lr=1e-3,
            warmup_steps=100,
            weight_decay=0.01,
            ema_decay=0.995,
            min_lr_ratio=0.1,
            threads=1,
            val_every=1000,
            save_every=500,
        )
        validation = VideoValidation(4, 25, 7.5)
        return cls(
            train=train, unet=demo_unet(), trainable=("all",), snr_gamma=5.0, train_frames=3, validation=validation
        )

    @classmethod
    def reference(cls) -> UNetTextConfig:
        """Tune-A-Video/MinD-Video: SD-1.5 inflated, attention layers tuned, lr 3e-5, 6 frames at 256²."""
        train = TrainConfig(
            steps=50_000,
            batch_size=16,
            lr=3e-5,
            warmup_steps=500,
            precision="bf16",
            gradient_checkpointing=True,
            ema_decay=0.9999,
            val_every=2000,
            save_every=2000,
        )
        return cls(train=train, validation=VideoValidation(4, 50, 7.5))


class UNetTextObjective(Objective):
    def __init__(self, unet: VideoUNet, null_cond: torch.Tensor, cfg: UNetTextConfig, scaling: float):
        super().__init__()
        self.unet, self.cfg, self.scaling = unet, cfg, scaling
        self.scheduler = dm.noise_scheduler()
        self.register_buffer("null_cond", null_cond, persistent=False)  # (L, D): the empty caption

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latents = dm.sample_latents(batch, rng, self.scaling, self.cfg.train_frames)
        drop = rng.rand("cond_dropout") < self.cfg.cond_dropout  # (b,)
        cond = torch.where(drop[:, None, None], self.null_cond.to(batch["text"].dtype), batch["text"])
        return dm.diffusion_loss(self.unet, self.scheduler, latents, cond, rng, self.cfg.snr_gamma), {}


class UNetTextStage(Stage):
    name = "unet-text"
    config_class = UNetTextConfig
    summary = "Tune the inflated video UNet on the stimulus videos with text conditioning."

    def build(self) -> UNetTextObjective:
        cfg: UNetTextConfig = self.config
        train = load_split(self.data, "train", video=True, captions=True)
        self.vae = dm.load_stage_vae(cfg.vae).to(self.device)
        self.text_path = resolve_component(cfg.text_encoder, "clip", ("clip",), "text_encoder")
        text = LocalCLIP.from_folder(self.text_path).to(self.device)
        unet = dm.build_unet(cfg.unet, cfg.init_unet, ("unet-text",))
        dm.check_shapes(unet, self.vae, text.hidden_size, "text encoder's hidden")
        self.trainable = dm.select_trainable(unet, cfg.trainable)
        # 1. cache latents and text conditions (the frozen networks run once)
        mean, std = dm.encode_videos(self.vae, train.video, self.device)
        unique, ids = np.unique(np.asarray(train.captions), return_inverse=True)
        table = text.text_states(list(unique)).cpu().numpy()  # (U, L, D)
        self.train_set = ArrayDataset({"latent_mean": mean, "latent_std": std}, {"text": (ids, table)})
        # 2. validation clips and their conditions
        test = load_split(self.data, "test", video=True, captions=True)
        index = np.arange(0, len(test), 2)[: cfg.validation.clips]
        self.val_video = np.asarray(test.video[index])
        self.val_cond = text.text_states([test.captions[i] for i in index]).to(self.device)
        self.val_latents = dm.encode_videos(self.vae, self.val_video, self.device)[0]
        null = text.text_states([""])[0]
        self.unet_config = unet.config.replace(sample_size=int(mean.shape[-1]))  # the pipeline's default size
        return UNetTextObjective(unet, null, cfg, dm.vae_scaling(self.vae))

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def shard_units(self, objective: UNetTextObjective) -> list[torch.nn.Module]:
        return unet_shard_units(objective.unet)

    def validate(self, objective: UNetTextObjective, step: int, out: Path) -> dict[str, float]:
        return validate_video(self, objective.unet, self.val_cond, objective.null_cond[None], step, out)

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        unet = VideoUNet(self.unet_config)
        unet.load_state_dict(substate(state, "unet"))
        save_component(unet, folder / "unet")

    def describe(self) -> dict[str, Any]:
        return {"text_encoder": str(self.text_path), "clips": len(self.train_set), "trainable": self.trainable}


# --------------------------------------------------------------------------------------------------- shared


def video_diffusion_checks(cfg: UNetTextConfig | Any) -> list[tuple[bool, str, Any]]:
    """The config checks every video-diffusion stage (unet-text, cotrain) shares, for :func:`check_all`."""
    return [
        (bool(cfg.vae), "vae (an AutoencoderKL folder or a vae stage output)", cfg.vae),
        (bool(cfg.trainable), "trainable layer groups", cfg.trainable),
        (0 <= cfg.cond_dropout < 1, "cond_dropout in [0, 1)", cfg.cond_dropout),
        (
            cfg.snr_gamma >= 0 and cfg.train_frames >= 0,
            "snr_gamma, train_frames ≥ 0",
            (cfg.snr_gamma, cfg.train_frames),
        ),
        (cfg.validation.clips >= 1 and cfg.validation.steps >= 1, "validation clips/steps ≥ 1", cfg.validation),
    ]


def unet_shard_units(unet: VideoUNet) -> list[torch.nn.Module]:
    """FSDP units: every resnet and transformer (modules entered through ``forward``, as FSDP's parameter
    gathering requires), then the UNet itself (stem, resamplers, head)."""
    from mindvideo.models.attention import VideoTransformer
    from mindvideo.models.unet import ResnetBlock

    return [m for m in unet.modules() if isinstance(m, (ResnetBlock, VideoTransformer))] + [unet]


def validate_video(
    stage: Stage, unet: VideoUNet, cond: torch.Tensor, negative: torch.Tensor, step: int, out: Path
) -> dict[str, float]:
    """Diffusion loss on the validation clips (fixed noise and timesteps) and, on rank 0, a GIF grid of
    ground truth | sample for each clip."""
    v = stage.config.validation
    latents = torch.from_numpy(stage.val_latents).to(stage.device) * dm.vae_scaling(stage.vae)
    rng = StepRandom(stage.config.train.seed, single_chunk(len(latents), step=-1), stage.device)
    loss = dm.diffusion_loss(unet, dm.noise_scheduler(), latents, cond, rng)
    samples = dm.sample_videos(
        lambda x, t, c: unet(x, t, c),
        cond,
        negative,
        tuple(latents.shape),
        steps=v.steps,
        guidance=v.guidance,
        seed=stage.config.train.seed,
    )
    if stage.info.is_main:
        video = dm.decode_latents(stage.vae, samples.float())
        rows = [[gt, sample] for gt, sample in zip(stage.val_video, video)]
        write_grid(out / "samples" / f"{stage.name}-step{step:07d}.gif", rows, fps=video.shape[1] / 2.0)
    return {"diffusion_loss": float(loss)}
