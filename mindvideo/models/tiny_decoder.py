"""``TinyDecoder``: an attention-free convolutional stand-in for the VAE decoder (after TAESD's tiny decoders).

It takes exactly what ``vae.decode`` takes — latents already divided by the VAE's ``scaling_factor``, ``(N, 4, h, w)``
— and returns ``(N, 3, H, W)`` images in [-1, 1], upsampled by the VAE's factor (8 for SD-1.5). The network::

    latents ×input_scale → soft clamp (tanh(x/3)·3) → conv 3×3 → act
      → per level: residual blocks (3 convs each), then nearest ×2 + conv 3×3 (all but the last level)
      → conv 3×3 → tanh

No normalisation and no attention: every op is a 3×3 convolution, an activation, an add or a nearest upsample, so it
exports to any runtime, works on any image size and costs a fraction of the VAE decoder (see :mod:`mindvideo.flops`:
~22 GFLOP against ~620 GFLOP per SD-1.5 frame at 256²). It is distilled from the checkpoint's VAE decoder by
``mindvideo train tiny-decoder`` (:mod:`mindvideo.train.stages.tiny_decoder`).

Checkpoint folder: ``CKPT/tiny_decoder/{config.json, diffusion_pytorch_model.safetensors}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.config import Config
from mindvideo.errors import MindVideoError
from mindvideo.weights import find_weights, load_into, read_state_dict, save_component

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}
WIDTH = 64  # channels per level of the default decoder (the full-resolution level has half)


@dataclasses.dataclass
class TinyDecoderConfig(Config):
    """``channels`` and ``layers_per_block`` run from the latent resolution to the output resolution, one entry per
    level; ``len(channels) - 1`` nearest ×2 upsamplings give the factor. ``input_scale`` multiplies the input (the
    VAE's ``scaling_factor``: the network sees unit-variance latents while its input stays ``vae.decode``'s)."""

    latent_channels: int = 4
    out_channels: int = 3
    channels: tuple[int, ...] = (WIDTH, WIDTH, WIDTH, WIDTH // 2)
    layers_per_block: tuple[int, ...] = (3, 3, 3, 1)
    act_fn: str = "relu"
    input_scale: float = 0.18215
    latent_clamp: float = 3.0  # soft clamp of the scaled latents: tanh(x / c) · c; 0 switches it off

    @property
    def factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def tiny(cls) -> TinyDecoderConfig:
        """Test size for :func:`mindvideo.checkpoint.tiny_vae_config` (8×): 8 channels, one block per level."""
        return cls(channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1))

    @classmethod
    def for_vae(
        cls,
        vae_config: Mapping[str, Any] | Any,
        width: int = WIDTH,
        blocks: int = 3,
        taper: bool = False,
        **changes: Any,
    ) -> TinyDecoderConfig:
        """The decoder for a diffusers ``AutoencoderKL`` config (a dict or ``vae.config``): one level per VAE level,
        so the factor is ``2 ** (len(block_out_channels) - 1)``; latent/image channels and the scaling factor copied.
        Every level has ``width`` channels and ``blocks`` residual blocks except the full-resolution one (half the
        width, at most one block: it holds most of the pixels). ``taper``: every level after the first halves the
        width of the one before and has at most one block (each level holds 4× the pixels of the one before, so its
        cost stays flat instead of growing 4×; the demo decoder: (32, 16, 8) channels, about half the time of
        (32, 32, 16)). ``changes`` override fields."""
        get = vae_config.get if isinstance(vae_config, Mapping) else lambda k, d=None: getattr(vae_config, k, d)
        levels = len(get("block_out_channels", (1, 1, 1, 1)))
        if taper:
            channels = tuple(max(width >> i, 1) for i in range(levels))
            layers = (blocks,) + (min(blocks, 1),) * (levels - 1)
        else:
            last_width, last_blocks = (max(width // 2, 1), min(blocks, 1)) if levels > 1 else (width, blocks)
            channels = (width,) * (levels - 1) + (last_width,)
            layers = (blocks,) * (levels - 1) + (last_blocks,)
        config = cls(
            latent_channels=int(get("latent_channels", 4)),
            out_channels=int(get("out_channels", 3)),
            channels=channels,
            layers_per_block=layers,
            input_scale=float(get("scaling_factor", None) or 0.18215),
        )
        return config.replace(**changes)

    def validate(self) -> None:
        """Raise ``ValueError`` for an unusable config (the loaders turn it into a :class:`MindVideoError`)."""
        if not self.channels or len(self.channels) != len(self.layers_per_block):
            raise ValueError(
                f"channels and layers_per_block need one entry per level, got {self.channels}, {self.layers_per_block}"
            )
        if min(self.channels) < 1 or min(self.layers_per_block) < 0:
            raise ValueError(f"channels must be ≥ 1 and layers_per_block ≥ 0, got {self.channels}")
        if self.latent_channels < 1 or self.out_channels < 1:
            raise ValueError("latent_channels and out_channels must be ≥ 1")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")
        if self.input_scale <= 0 or self.latent_clamp < 0:
            raise ValueError(f"input_scale must be > 0, latent_clamp ≥ 0; got {self.input_scale}, {self.latent_clamp}")


def conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    """conv–act–conv–act–conv plus the input, then act (TAESD's block)."""

    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(conv(c, c), act(), conv(c, c), act(), conv(c, c))
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + x)


class UpLevel(nn.Module):
    """Residual blocks at one resolution, then (except at the last level) nearest ×2 and a conv to the next width."""

    def __init__(self, channels: int, blocks: int, out: int | None, act: type[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*(ResBlock(channels, act) for _ in range(blocks)))
        self.up_conv = conv(channels, out) if out is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.up_conv is None:
            return x
        return self.up_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (N, C', 2h, 2w)


class TinyDecoder(nn.Module):
    """``latents (N, C, h, w)`` as ``vae.decode`` takes them → ``images (N, 3, h·factor, w·factor)`` in [-1, 1]."""

    def __init__(self, config: TinyDecoderConfig | None = None):
        super().__init__()
        self.config = config = config or TinyDecoderConfig()
        config.validate()
        act = ACTIVATIONS[config.act_fn]
        ch = config.channels
        self.conv_in = conv(config.latent_channels, ch[0])
        self.act = act()
        self.levels = nn.ModuleList(
            UpLevel(ch[i], config.layers_per_block[i], ch[i + 1] if i + 1 < len(ch) else None, act)
            for i in range(len(ch))
        )
        self.conv_out = conv(ch[-1], config.out_channels)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if latents.ndim != 4 or latents.shape[1] != cfg.latent_channels:
            raise MindVideoError(
                f"expected latents shaped (N, {cfg.latent_channels}, h, w) for the tiny decoder",
                f"{tuple(latents.shape)}",
                "pass one latent frame per row (what vae.decode takes)",
            )
        # 1. the latent scale SD's sampler works in, softly clamped (outliers cannot blow up the convs)
        x = latents * cfg.input_scale
        if cfg.latent_clamp > 0:
            x = torch.tanh(x / cfg.latent_clamp) * cfg.latent_clamp
        # 2. stem, the levels (upsampling between them), head; on the CPU in channels-last layout, which oneDNN's
        # convolutions take as it is (NCHW costs a layout reorder around every conv: ~1/3 of the decoder's time)
        channels_last = x.device.type == "cpu" and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.act(self.conv_in(x))
        for level in self.levels:
            x = level(x)
        x = torch.tanh(self.conv_out(x))  # (N, 3, H, W) in [-1, 1]
        return x.contiguous() if channels_last else x

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TinyDecoder:
        """A ``tiny_decoder/`` folder (``config.json`` + weights); every problem is a :class:`MindVideoError`."""
        folder = Path(path)
        if not folder.is_dir():
            raise MindVideoError(
                f"expected a tiny decoder folder at {folder}",
                "no such folder",
                "train one with `mindvideo train tiny-decoder` and copy its model/tiny_decoder/ into the checkpoint",
            )
        try:
            config = TinyDecoderConfig.load(folder / "config.json")
            model = cls(config)
        except (TypeError, ValueError) as exc:
            raise MindVideoError(f"expected a tiny decoder config in {folder}", str(exc), "fix config.json") from None
        source = find_weights(folder)
        load_into(model, read_state_dict(source), source)
        return model.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """``config.json`` + ``diffusion_pytorch_model.safetensors``, written atomically."""
        save_component(self, path)


def load_tiny_decoder(checkpoint: str | Path) -> TinyDecoder:
    """``CKPT/tiny_decoder`` of a checkpoint root, with a clear error when the checkpoint has none."""
    folder = Path(checkpoint) / "tiny_decoder"
    if not folder.is_dir():
        raise MindVideoError(
            f"expected a tiny_decoder/ folder in the checkpoint {checkpoint} for --decoder tiny",
            "none",
            "train one with `mindvideo train tiny-decoder --set vae=CKPT …` and copy OUT/model/tiny_decoder into the "
            "checkpoint, or use --decoder vae",
        )
    return TinyDecoder.from_pretrained(folder)
