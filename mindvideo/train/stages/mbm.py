"""Stage 1 — masked brain modelling (MBM): pre-train the fMRI encoder as a masked autoencoder
(mind-vis §3.1, MinD-Video §3.2).

The same random 75 % of the patches is masked in every frame of a window; the encoder sees the visible patches, a
small decoder reconstructs all of them, and the loss is the MSE on the masked patches only. Data: the fMRI of a
prepared stimulus folder (its train split) or a ``prepare --layout hcp`` folder of pre-training runs.
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
from mindvideo.config import read_json
from mindvideo.models import FMRIEncoder, FMRIEncoderConfig
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, RunWindows, StepRandom, data_kind, hcp_windows, load_split, single_chunk
from mindvideo.train.stages.base import Objective, Stage, encoder_backbone_state, substate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MBMConfig(StageConfig):
    """``encoder.num_voxels`` and ``encoder.window_size`` are taken from the data; ``decoder_*`` size the MBM
    decoder (dropped after this stage)."""

    stage = "mbm"
    encoder: FMRIEncoderConfig = dataclasses.field(default_factory=lambda: FMRIEncoderConfig(decoder_depth=8))
    mask_ratio: float = 0.75
    init_encoder: str | None = None  # continue from an mbm output or an fmri_encoder folder
    val_windows: int = 256

    def validate(self) -> None:
        super().validate()
        e = self.encoder
        check_all(
            [
                (0.0 < self.mask_ratio < 1.0, "mask_ratio in (0, 1)", self.mask_ratio),
                (e.decoder_depth >= 1, "encoder.decoder_depth ≥ 1 (MBM needs its decoder)", e.decoder_depth),
                (e.embed_dim % e.num_heads == 0, "encoder.embed_dim divisible by num_heads", e.embed_dim),
                (
                    e.decoder_embed_dim % e.decoder_num_heads == 0,
                    "decoder_embed_dim divisible by its heads",
                    e.decoder_embed_dim,
                ),
                (self.val_windows >= 1, "val_windows ≥ 1", self.val_windows),
            ]
        )

    @classmethod
    def tiny(cls) -> MBMConfig:
        encoder = FMRIEncoderConfig.tiny().replace(depth=1, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
        return cls(train=TrainConfig(steps=3, batch_size=4, lr=1e-3, log_every=1), encoder=encoder, val_windows=8)

    @classmethod
    def demo(cls) -> MBMConfig:
        train = TrainConfig(steps=300, batch_size=32, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=30)
        return cls(train=train, encoder=demo_encoder(decoder_depth=1), val_windows=80)

    @classmethod
    def reference(cls) -> MBMConfig:
        """mind-vis/MinD-Video pre-training: ViT-L-sized encoder (mlp ratio 1), 512-wide depth-8 decoder, mask 0.75,
        AdamW lr 2.5e-4, wd 0.05, batch 100 (500 epochs of ~136k HCP windows ≈ 680k steps)."""
        train = TrainConfig(
            steps=680_000,
            batch_size=100,
            lr=2.5e-4,
            weight_decay=0.05,
            betas=(0.9, 0.95),
            warmup_steps=20_000,
            precision="bf16",
            log_every=100,
            val_every=10_000,
            save_every=10_000,
        )
        encoder = FMRIEncoderConfig(mlp_ratio=1.0, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
        return cls(train=train, encoder=encoder)


def demo_encoder(**changes: Any) -> FMRIEncoderConfig:
    """The built-in demo model's encoder: 64 wide, 2 blocks, 16 condition tokens of width 64."""
    base = FMRIEncoderConfig(
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        out_channel=16,
        out_dim=64,
        use_norm=True,
        decoder_embed_dim=32,
        decoder_depth=0,
        decoder_num_heads=4,
    )
    return base.replace(**changes)


# --------------------------------------------------------------------------------------------------- objective


def masked_modelling_loss(
    encoder: FMRIEncoder, fmri: torch.Tensor, noise: torch.Tensor, mask_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`FMRIEncoder.forward_mbm` with the masking noise passed in (``noise`` (B, n) uniform; the lowest
    ``(1 − mask_ratio)·n`` of each row stay visible), so distributed runs mask exactly as one process does.

    Returns ``loss`` (MSE on masked patches), ``pred`` (B·W, n, p) and ``mask`` (B, n) bool."""
    b, w, _ = fmri.shape
    p, n, d = encoder.config.patch_size, encoder.config.num_patches, encoder.config.embed_dim
    keep_count = max(1, round(n * (1.0 - mask_ratio)))
    # 1. the same visible patches in every frame of a window
    keep = noise.argsort(dim=1)[:, :keep_count].sort(dim=1).values  # (B, k)
    keep_bw = keep.repeat_interleave(w, dim=0)  # (B·W, k)
    # 2. encode the visible patches, decode every patch
    x = encoder.embed(fmri).gather(1, keep_bw[..., None].expand(-1, -1, d))  # (B·W, k, D)
    pred = encoder.decoder(encoder.norm(encoder.run_blocks(x, w)), keep_bw, n)  # (B·W, n, p)
    # 3. score the masked patches
    target = fmri[..., : n * p].reshape(b * w, n, p)
    mask = torch.ones(b, n, dtype=torch.bool, device=fmri.device)
    mask[torch.arange(b, device=fmri.device)[:, None], keep] = False
    masked = mask.repeat_interleave(w, dim=0).float()
    loss = ((pred.float() - target).pow(2).mean(dim=-1) * masked).sum() / masked.sum().clamp(min=1.0)
    return loss, pred, mask


class MBMObjective(Objective):
    def __init__(self, encoder: FMRIEncoder, mask_ratio: float):
        super().__init__()
        self.encoder, self.mask_ratio = encoder, mask_ratio
        # the projection head, CLS token and the temperature take no part in MBM
        unused = ("proj_head.", "cls_token", "logit_scale", "pos_embed")
        for name, param in encoder.named_parameters():
            param.requires_grad_(not name.startswith(unused))

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        noise = rng.rand("mask", self.encoder.config.num_patches)  # (b, n)
        loss, _, _ = masked_modelling_loss(self.encoder, batch["fmri"], noise, self.mask_ratio)
        return loss, {}


# --------------------------------------------------------------------------------------------------- stage


class MBMStage(Stage):
    name = "mbm"
    config_class = MBMConfig
    summary = "Masked brain modelling: pre-train the fMRI encoder on fMRI alone."

    def build(self) -> MBMObjective:
        cfg: MBMConfig = self.config
        self.kind = data_kind(self.data)
        if self.kind == "stimulus":
            train = load_split(self.data, "train")
            self.train_set = ArrayDataset({"fmri": np.asarray(train.fmri, dtype=np.float32)})
            window, voxels = train.fmri.shape[1:]
            self.val = _val_windows(self.data, train.fmri, cfg.val_windows)
        else:
            window = int(read_json(self.data / "data_transform" / "config.json")["preprocess"]["window_size"])
            runs, table = hcp_windows(self.data, window)
            self.train_set, voxels = RunWindows(runs, table, window), runs[0].shape[1]
            pick = np.random.default_rng(cfg.train.seed).choice(len(table), min(cfg.val_windows, len(table)), False)
            self.val = np.stack([self.train_set[int(i)]["fmri"].numpy() for i in np.sort(pick)])
        self.encoder_config = cfg.encoder.replace(num_voxels=int(voxels), window_size=int(window))
        encoder = FMRIEncoder(self.encoder_config)
        if cfg.init_encoder:
            _init_from(encoder, cfg.init_encoder)
        return MBMObjective(encoder, cfg.mask_ratio)

    def dataset(self) -> tud.Dataset:
        return self.train_set

    def validate(self, objective: MBMObjective, step: int, out: Path) -> dict[str, float]:
        encoder = objective.encoder
        fmri = torch.from_numpy(np.array(self.val)).to(self.device)
        rng = StepRandom(self.config.train.seed, single_chunk(len(fmri), step=-1), self.device)
        noise = rng.rand("mask", encoder.config.num_patches)
        loss, pred, mask = masked_modelling_loss(encoder, fmri, noise, self.config.mask_ratio)
        b, w, _ = fmri.shape
        n, p = encoder.config.num_patches, encoder.config.patch_size
        target = fmri[..., : n * p].reshape(b * w, n, p)
        masked = mask.repeat_interleave(w, dim=0)  # (B·W, n)
        corr = _pearson(pred.float()[masked], target[masked])
        if self.info.is_main:
            _plot_reconstruction(out / "samples" / f"mbm-step{step:07d}.png", target, pred.float(), masked)
        return {"masked_mse": float(loss), "masked_corr": corr}

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        encoder = FMRIEncoder(self.encoder_config)
        encoder.load_state_dict(substate(state, "encoder"))
        save_component(encoder, folder / "fmri_encoder")

    def describe(self) -> dict[str, Any]:
        return {"data_kind": self.kind, "windows": len(self.train_set), "encoder": self.encoder_config.to_dict()}


def _val_windows(root: Path, train_fmri: np.ndarray, count: int) -> np.ndarray:
    test = root / "test" / "fmri.npy"
    source = np.load(test, mmap_mode="r") if test.is_file() else train_fmri
    return np.asarray(source[:count], dtype=np.float32)


def _init_from(encoder: FMRIEncoder, path: str) -> None:
    """Backbone (and, when shapes match, decoder) weights of an earlier mbm run or any encoder folder."""
    from mindvideo.checkpoint import find_weights, read_state_dict
    from mindvideo.train.checkpointing import resolve_component

    folder = resolve_component(path, "fmri_encoder", ("mbm",), "init_encoder")
    source = read_state_dict(find_weights(folder))
    state = encoder_backbone_state(encoder, source)
    own = encoder.state_dict()
    state.update({k: v for k, v in source.items() if k.startswith("decoder.") and own.get(k, v).shape == v.shape})
    encoder.load_state_dict(state, strict=False)
    log.info("initialised the encoder from %s (%d tensors)", folder, len(state))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-8))


def _plot_reconstruction(path: Path, target: torch.Tensor, pred: torch.Tensor, masked: torch.Tensor) -> None:
    """Four windows' first frame: target and prediction per voxel, masked patches shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(4, len(target))
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.8 * rows), squeeze=False)
    p = target.shape[-1]
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(target[i].flatten().cpu(), lw=0.8, label="fMRI")
        ax.plot(pred[i].flatten().cpu(), lw=0.8, label="reconstruction")
        for j in torch.nonzero(masked[i]).flatten().tolist():
            ax.axvspan(j * p, (j + 1) * p, color="0.9", lw=0)
        ax.set_xlim(0, target[i].numel())
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("voxel (shaded: masked patches)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
