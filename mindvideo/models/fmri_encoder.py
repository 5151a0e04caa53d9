"""``FMRIEncoder``: the 1-D ViT that maps a window of fMRI frames to a ``(B, 77, 768)`` condition (MinD-Video §3.2).

Input ``(B, W, V)``: W consecutive TRs (the window), V selected voxels (padded to a multiple of ``patch_size``).
Each frame is cut into V/p patches by a strided Conv1d; fixed 1-D sin-cos positions are added; each block does
spatial attention over a frame's patches, then (``use_temp_attn``) temporal attention across the W frames at each
patch position, then the MLP. The projection head maps the W·V/p tokens to ``out_channel`` tokens
(``channel_mapper``) and the width to ``out_dim``.

Masked brain modelling (MBM, mind-vis/MinD-Video §3.1) uses the same encoder on the visible patches plus a small
decoder (``decoder_depth > 0``) that reconstructs the masked ones. Parameter names equal the reference checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from mindvideo.config import Config
from mindvideo.errors import MindVideoError
from mindvideo.weights import find_weights, load_into, read_state_dict, save_component

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FMRIEncoderConfig(Config):
    """Reference config keys (``num_voxels`` … ``logit_scale_init_value``) plus the MBM decoder's size."""

    # the keys that fix the weights' shapes; every reference and mindvideo config.json has them
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = (
        "num_voxels",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "out_channel",
        "out_dim",
    )

    num_voxels: int = 4656
    patch_size: int = 16
    embed_dim: int = 1024
    in_chans: int = 1
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    out_channel: int = 77
    out_dim: int = 768
    use_norm: bool = False
    dropout: float = 0.0
    window_size: int = 2
    use_temp_attn: bool = True
    logit_scale_init_value: float = 1.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 0  # 0: no MBM decoder (inference checkpoints have none)
    decoder_num_heads: int = 16

    @property
    def num_patches(self) -> int:
        return self.num_voxels // self.patch_size

    @classmethod
    def tiny(cls, num_voxels: int = 128) -> FMRIEncoderConfig:
        return cls(num_voxels=num_voxels, embed_dim=32, depth=2, num_heads=4, out_channel=8, out_dim=32)


def sincos_positions(dim: int, count: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding (MAE): (count [+1 zero row for CLS], dim) float32."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.arange(count, dtype=np.float64)[:, None] * omega[None]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


class PatchEmbed1D(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv1d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).transpose(1, 2)  # (N, C_in, V) → (N, V/p, D)


class SelfAttention(nn.Module):
    """ViT attention with a fused ``qkv`` projection; optionally returns the attention probabilities."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3×(b, h, n, d)
        if return_attn:
            probs = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)  # (b, h, n, n)
            return self.proj((probs @ v).transpose(1, 2).reshape(b, n, c)), probs
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block: spatial attention → (temporal attention across the window) → MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, temporal: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.temporal = temporal
        if temporal:
            self.norm_temp, self.attn_temp = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, window: int, return_attn: bool = False):
        """``x``: (B·W, n, D) frame-major → same; with ``return_attn`` also (spatial, temporal) probabilities."""
        h, spatial = self.attn(self.norm1(x), return_attn=True) if return_attn else (self.attn(self.norm1(x)), None)
        x = x + h
        temporal = None
        if self.temporal:
            bw, n, d = x.shape
            t = x.reshape(bw // window, window, n, d).transpose(1, 2).reshape(-1, window, d)  # (B·n, W, D)
            out = self.attn_temp(self.norm_temp(t), return_attn=return_attn)
            h, temporal = out if return_attn else (out, None)
            t = t + h
            x = t.reshape(bw // window, n, window, d).transpose(1, 2).reshape(bw, n, d)  # (B·W, n, D)
        x = x + self.mlp(self.norm2(x))
        return (x, spatial, temporal) if return_attn else x


class ProjectionHead(nn.Module):
    """Token axis W·n → ``out_channel`` (channel_mapper), width D → ``out_dim`` with a GELU residual MLP."""

    def __init__(self, tokens: int, out_channel: int, dim: int, out_dim: int, use_norm: bool, dropout: float):
        super().__init__()
        self.layer_norm_in = nn.Identity()
        self.channel_mapper = nn.Linear(tokens, out_channel, bias=False)
        self.projection = nn.Linear(dim, out_dim, bias=False)
        self.fc = nn.Linear(out_dim, out_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_mapper(self.layer_norm_in(x).transpose(1, 2)).transpose(1, 2)  # (B, out_channel, D)
        projected = self.projection(x)
        return self.layer_norm(projected + self.dropout(self.fc(F.gelu(projected))))


class MBMDecoder(nn.Module):
    """MAE decoder for masked brain modelling: visible tokens + mask tokens → patch values."""

    def __init__(self, cfg: FMRIEncoderConfig):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.embed = nn.Linear(cfg.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer(
            "pos_embed", sincos_positions(d, cfg.num_patches, cls_token=False)[None], persistent=False
        )
        self.blocks = nn.ModuleList(
            [Block(d, cfg.decoder_num_heads, cfg.mlp_ratio, False) for _ in range(cfg.decoder_depth)]
        )
        self.norm = nn.LayerNorm(d)
        self.pred = nn.Linear(d, cfg.patch_size * cfg.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, num_patches: int) -> torch.Tensor:
        """``visible`` (N, k, D) at patch indices ``keep`` (N, k) → (N, num_patches, p) predictions."""
        v = self.embed(visible)
        n, k, d = v.shape
        x = self.mask_token.expand(n, num_patches, d).clone()
        x = x.scatter(1, keep[..., None].expand(n, k, d), v) + self.pos_embed
        for block in self.blocks:
            x = block(x, 1)
        return self.pred(self.norm(x))


class FMRIEncoder(nn.Module):
    """``forward(fmri (B, W, V)) -> (B, out_channel, out_dim)``; ``forward_mbm`` for pre-training."""

    def __init__(self, config: FMRIEncoderConfig | None = None):
        super().__init__()
        cfg = self.config = config or FMRIEncoderConfig()
        n, d = cfg.num_patches, cfg.embed_dim
        self.patch_embed = PatchEmbed1D(cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))  # kept for checkpoint compatibility; unused
        self.pos_embed = nn.Parameter(sincos_positions(d, n)[None], requires_grad=False)  # (1, n+1, D), fixed
        self.blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.use_temp_attn) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(d)
        self.proj_head = ProjectionHead(
            n * cfg.window_size, cfg.out_channel, d, cfg.out_dim, cfg.use_norm, cfg.dropout
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init_value)))
        self.decoder = MBMDecoder(cfg) if cfg.decoder_depth > 0 else None
        self.gradient_checkpointing = False  # training: recompute block activations in the backward pass
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, fmri: torch.Tensor) -> torch.Tensor:
        """(B, W, V) → patch tokens with positions (B·W, n, D)."""
        b, w, v = fmri.shape
        return self.patch_embed(fmri.reshape(b * w, 1, v)) + self.pos_embed[:, 1:]

    def run_blocks(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """The transformer blocks on tokens (B·W, n, D), with gradient checkpointing when it is switched on."""
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, window, use_reentrant=False)
            else:
                x = block(x, window)
        return x

    def encode_tokens(self, fmri: torch.Tensor) -> torch.Tensor:
        """(B, W, V) → normalised tokens (B, W·n, D) before the projection head."""
        b, w, _ = fmri.shape
        x = self.run_blocks(self.embed(fmri), w)
        return self.norm(x).reshape(b, -1, x.shape[-1])  # (B, W·n, D)

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """(B, W, V) float → (B, out_channel, out_dim): the UNet's cross-attention condition."""
        return self.proj_head(self.encode_tokens(fmri))

    def forward_mbm(self, fmri: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None):
        """Masked brain modelling: mask the same random patches in every frame of a window, encode the visible ones,
        reconstruct all. Returns ``loss`` (MSE on masked patches only), ``pred`` (B, W, n·p) and ``mask`` (B, n) bool.
        """
        if self.decoder is None:
            raise ValueError("forward_mbm needs an MBM decoder: build the encoder with decoder_depth > 0")
        b, w, _ = fmri.shape
        p, n = self.config.patch_size, self.config.num_patches
        keep_count = max(1, round(n * (1.0 - mask_ratio)))
        # 1. one random permutation per clip, shared by its frames so temporal attention sees aligned patches
        order = torch.rand(b, n, generator=generator, device=fmri.device).argsort(dim=1)
        keep = order[:, :keep_count].sort(dim=1).values  # (B, k)
        keep_bw = keep.repeat_interleave(w, dim=0)  # (B·W, k)
        # 2. encode visible patches only
        x = self.embed(fmri).gather(1, keep_bw[..., None].expand(-1, -1, self.config.embed_dim))  # (B·W, k, D)
        x = self.run_blocks(x, w)
        # 3. decode every patch, score the masked ones
        pred = self.decoder(self.norm(x), keep_bw, n)  # (B·W, n, p)
        target = fmri[..., : n * p].reshape(b * w, n, p)  # voxels past the last whole patch are not embedded
        mask = torch.ones(b, n, dtype=torch.bool, device=fmri.device)
        mask[torch.arange(b, device=fmri.device)[:, None], keep] = False
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B·W, n)
        masked = mask.repeat_interleave(w, dim=0).float()
        loss = (per_patch * masked).sum() / masked.sum().clamp(min=1.0)
        return loss, pred.reshape(b, w, n * p), mask

    @torch.no_grad()
    def attention_maps(self, fmri: torch.Tensor) -> list[dict[str, torch.Tensor | None]]:
        """Per block: ``spatial`` (B, W, heads, n, n) and ``temporal`` (B, n, heads, W, W) attention probabilities
        (``None`` without temporal attention), for the interpretability analysis."""
        b, w, _ = fmri.shape
        x, maps = self.embed(fmri), []
        for block in self.blocks:
            x, spatial, temporal = block(x, w, return_attn=True)
            maps.append(
                {
                    "spatial": spatial.reshape(b, w, *spatial.shape[1:]),
                    "temporal": None if temporal is None else temporal.reshape(b, -1, *temporal.shape[1:]),
                }
            )
        return maps

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    @property
    def device(self) -> torch.device:
        return self.pos_embed.device

    @classmethod
    def from_pretrained(cls, path, **overrides) -> FMRIEncoder:
        """Load a reference ``fmri_encoder/`` folder or our own; ``num_voxels=`` overrides the config."""
        return load_fmri_encoder(path, **overrides)

    def save_pretrained(self, path) -> None:
        save_component(self, path)


# --------------------------------------------------------------------------------------------------- loading


def load_fmri_encoder(path: str | Path, **overrides: Any) -> FMRIEncoder:
    """A reference ``fmri_encoder/`` folder or our own. ``num_voxels=`` overrides the config (the fixed sin-cos
    positions are recomputed for the new patch count; learned shapes must still fit)."""
    folder = Path(path)
    try:
        config = FMRIEncoderConfig.load(folder / "config.json", **overrides)
    except TypeError as exc:
        raise MindVideoError(f"expected an fMRI encoder config in {folder}", str(exc), "fix config.json") from None
    model = FMRIEncoder(config)
    source = find_weights(folder)
    state = read_state_dict(source)
    pretrain_only = [k for k in state if k.startswith("decoder") and not hasattr(model, k.split(".")[0])]
    if pretrain_only and model.decoder is None:
        log.info("ignoring %d MBM decoder tensors in %s", len(pretrain_only), source)
        state = {k: v for k, v in state.items() if k not in pretrain_only}
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = sincos_positions(config.embed_dim, config.num_patches)[None]  # fixed, not learned
    # Reference encoders and older checkpoints of ours carry an MAE mask token the encoder never uses (masked brain
    # modelling uses the decoder's own, decoder.mask_token): dropped.
    state.pop("mask_token", None)
    load_into(model, state, source, optional=("decoder.", "logit_scale"))
    return model
