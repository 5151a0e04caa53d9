"""Stage 4 — co-training: the fMRI encoder and the UNet's self-, cross- and temporal attention, end to end with
the diffusion loss on fMRI → video pairs (MinD-Video §3.4).

The condition is the encoder's output for the window. With probability ``cond_dropout`` the window is replaced by
the *negative* fMRI — the mean training window, which the pipeline also uses as the negative input of adversarial
guidance — so the UNet learns the "unconditional" branch that guidance subtracts. The output is a complete
checkpoint folder (``fmri_encoder/``, ``unet/``, ``vae/``, ``scheduler/``, ``data_transform/``) that
``MindVideoPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from mindvideo.checkpoint import SCHEDULER_CONFIG, load_components, load_fmri_encoder, save_component
from mindvideo.data import FMRITransform
from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, VideoUNet
from mindvideo.train import diffusion as dm
from mindvideo.train.checkpointing import resolve_component
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.stages.unet_text import VideoValidation, unet_shard_units, validate_video, video_diffusion_checks
from mindvideo.weights import write_checksums

log = logging.getLogger(__name__)

FROZEN_ENCODER = ("cls_token", "pos_embed", "logit_scale")  # unused by the condition path


@dataclasses.dataclass
class CotrainConfig(StageConfig):
    """Inputs: ``init_encoder`` (a contrastive or mbm output, or an ``fmri_encoder`` folder), ``init_unet`` (a
    unet-text output or a UNet folder), ``vae`` (a vae output or an ``AutoencoderKL`` folder)."""

    stage = "cotrain"
    init_encoder: str | None = None
    init_unet: str | None = None
    vae: str | None = None
    trainable: tuple[str, ...] = ("attention",)
    train_encoder: bool = True
    cond_dropout: float = 0.1
    snr_gamma: float = 0.0  # > 0: Min-SNR-γ loss weighting (5 is the paper's choice)
    train_frames: int = 0  # > 0: train on random runs of this many consecutive frames
    validation: VideoValidation = dataclasses.field(default_factory=lambda: VideoValidation(4, 20, 12.5))

    def validate(self) -> None:
        super().validate()
        check_all(
            [
                (
                    bool(self.init_encoder),
                    "init_encoder (a contrastive output or an fmri_encoder folder)",
                    self.init_encoder,
                ),
                (bool(self.init_unet), "init_unet (a unet-text output or a UNet folder)", self.init_unet),
                *video_diffusion_checks(self),
            ]
        )

    @classmethod
    def tiny(cls) -> CotrainConfig:
        train = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1)
        return cls(train=train, validation=VideoValidation(1, 2, 2.0))

    @classmethod
    def demo(cls) -> CotrainConfig:
        """Every UNet layer trains (the demo UNet was trained from scratch), on runs of 3 frames with Min-SNR-5."""
        train = TrainConfig(
            steps=3000,
            batch_size=16,
            lr=5e-4,
            warmup_steps=100,
            weight_decay=0.01,
            ema_decay=0.995,
            min_lr_ratio=0.1,
            threads=1,
            val_every=1000,
            save_every=500,
        )
        validation = VideoValidation(4, 25, 12.5)
        return cls(
            train=train, trainable=("all",), cond_dropout=0.15, snr_gamma=5.0, train_frames=3, validation=validation
        )

    @classmethod
    def reference(cls) -> CotrainConfig:
        """Encoder + SD attention layers, lr 5e-5, guidance 12.5 for the validation samples."""
        train = TrainConfig(
            steps=30_000,
            batch_size=16,
            lr=5e-5,
            warmup_steps=500,
            precision="bf16",
            gradient_checkpointing=True,
            ema_decay=0.9999,
            val_every=2000,
            save_every=2000,
        )
        return cls(train=train, validation=VideoValidation(4, 50, 12.5))


class CotrainObjective(Objective):
    def __init__(
        self, encoder: FMRIEncoder, unet: VideoUNet, negative: torch.Tensor, cfg: CotrainConfig, scaling: float
    ):
        super().__init__()
        self.encoder, self.unet, self.cfg, self.scaling = encoder, unet, cfg, scaling
        self.scheduler = dm.noise_scheduler()
        self.register_buffer("negative", negative, persistent=False)  # (W, V): the mean training window

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fmri = batch["fmri"]
        drop = rng.rand("cond_dropout") < self.cfg.cond_dropout  # (b,)
        fmri = torch.where(drop[:, None, None], self.negative.to(fmri.dtype), fmri)
        latents = dm.sample_latents(batch, rng, self.scaling, self.cfg.train_frames)
        loss = dm.diffusion_loss(self.unet, self.scheduler, latents, self.encoder(fmri), rng, self.cfg.snr_gamma)
        return loss, {}


class CotrainStage(Stage):
    name = "cotrain"
    config_class = CotrainConfig
    summary = "Co-train the fMRI encoder and the UNet's attention on fMRI → video pairs (the final checkpoint)."

    def build(self) -> CotrainObjective:
        cfg: CotrainConfig = self.config
        train = load_split(self.data, "train", video=True)
        self.transform = _transform(self.data)
        self.vae_path = resolve_component(cfg.vae, "vae", ("vae",), "vae")
        self.vae = dm.load_stage_vae(str(self.vae_path)).to(self.device)
        encoder = _encoder(cfg.init_encoder, train.fmri.shape[1:])
        unet = dm.build_unet(None, cfg.init_unet, ("unet-text", "cotrain"))
        dm.check_shapes(unet, self.vae, encoder.config.out_dim, "fMRI encoder's out_dim")
        for name, p in encoder.named_parameters():
            p.requires_grad_(cfg.train_encoder and not name.startswith(FROZEN_ENCODER))
        self.trainable = dm.select_trainable(unet, cfg.trainable)
        # 1. cache latents; the negative condition is the mean training window (the pipeline's default too)
        mean, std = dm.encode_videos(self.vae, train.video, self.device)
        self.train_set = ArrayDataset(
            {"fmri": np.asarray(train.fmri, np.float32), "latent_mean": mean, "latent_std": std}
        )
        negative = torch.from_numpy(self.transform.negative_fmri)
        # 2. validation windows
        test = load_split(self.data, "test", video=True)
        index = np.arange(0, len(test), 2)[: cfg.validation.clips]
        self.val_video, self.val_fmri = np.asarray(test.video[index]), np.asarray(test.fmri[index], np.float32)
        self.val_latents = dm.encode_videos(self.vae, self.val_video, self.device)[0]
        self.encoder_config = encoder.config
        self.unet_config = unet.config.replace(sample_size=int(mean.shape[-1]))  # the pipeline's default size
        return CotrainObjective(encoder, unet, negative, cfg, dm.vae_scaling(self.vae))

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def shard_units(self, objective: CotrainObjective) -> list[torch.nn.Module]:
        return unet_shard_units(objective.unet)

    def validate(self, objective: CotrainObjective, step: int, out: Path) -> dict[str, float]:
        cond = objective.encoder(torch.from_numpy(self.val_fmri).to(self.device))
        negative = objective.encoder(objective.negative[None])
        return validate_video(self, objective.unet, cond, negative, step, out)

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        """A checkpoint folder the pipeline loads, verified by loading it back."""
        encoder, unet = FMRIEncoder(self.encoder_config), VideoUNet(self.unet_config)
        encoder.load_state_dict(substate(state, "encoder"))
        unet.load_state_dict(substate(state, "unet"))
        save_component(encoder, folder / "fmri_encoder")
        save_component(unet, folder / "unet")
        self.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        write_checksums(folder / "vae")
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
        self.transform.save(folder / "data_transform")
        load_components(folder)

    def describe(self) -> dict[str, Any]:
        return {"vae": str(self.vae_path), "windows": len(self.train_set), "trainable_unet": self.trainable}


def _transform(root: Path) -> FMRITransform:
    if not (root / "data_transform").is_dir():
        raise MindVideoError(
            f"expected the fitted data transform at {root / 'data_transform'}",
            "none",
            "re-run `mindvideo data prepare`",
        )
    return FMRITransform.load(root / "data_transform")


def _encoder(path: str, shape: tuple[int, ...]) -> FMRIEncoder:
    """The encoder of a contrastive/mbm output or folder (MBM decoder dropped), checked against the data."""
    folder = resolve_component(path, "fmri_encoder", ("contrastive", "mbm"), "init_encoder")
    encoder = load_fmri_encoder(folder, decoder_depth=0)
    window, voxels = shape
    if (encoder.config.window_size, encoder.config.num_voxels) != (window, voxels):
        raise MindVideoError(
            f"expected an encoder for windows of {window} TRs × {voxels} voxels (the data)",
            f"{encoder.config.window_size} × {encoder.config.num_voxels} in {folder}",
            "train the encoder on this prepared folder",
        )
    return encoder
