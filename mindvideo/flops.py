"""FLOP counts of the networks at given shapes, and what one clip costs (count first, then measure).

Counting uses torch's own ``torch.utils.flop_counter.FlopCounterMode`` (multiply-adds × 2 of convolutions, matrix
products and attention), run on modules built on the ``meta`` device: shapes propagate, nothing is allocated, so an
SD-1.5 UNet (3.4 GB of fp32 weights) is counted in well under a second on any machine.

One gap in torch's table is filled here: CPU ``scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which ``FlopCounterMode`` does not know and counts as 0; we
register the same formula torch uses for its GPU attention kernels (4·B·H·L·S·E). On ``meta`` tensors attention
decomposes into ``bmm`` and is counted either way.

Every count is split into ``conv`` (convolutions), ``linear`` (``mm``/``addmm``: projections, feed-forwards) and
``attention`` (the QKᵀ and AV products: ``bmm``/``baddbmm``/fused attention). ``total - attention`` reproduces
figures that were counted without the attention products, e.g. the commonly quoted SD-1.5 UNet 171.6 GFLOP and VAE
decoder 620 GFLOP per frame at 256² (the image UNet with attention: 180.1; our video UNet, whose sparse-causal
self-attention reads two frames and which adds temporal attention: ~200 per frame).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils import flop_counter

from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from mindvideo.models.unet import VideoUNet, VideoUNetConfig

log = logging.getLogger(__name__)

ATTENTION_OPS = ("bmm", "baddbmm", "attention")  # op-name fragments of attention products
LINEAR_OPS = ("mm", "addmm", "_scaled_mm")
BF16_RATE = 790e12  # H100/H200 dense bf16 matrix rate measured with a large matrix product


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for attention ops torch's table lacks (present in this torch build only)."""
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    return {getattr(aten, n): _cpu_sdpa_flops for n in names if hasattr(aten, n)}


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs (multiply-adds × 2) of one call, per aten op name."""

    by_op: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def _of(self, kind: str) -> int:
        return sum(v for op, v in self.by_op.items() if _kind(op) == kind)

    @property
    def conv(self) -> int:
        return self._of("conv")

    @property
    def linear(self) -> int:
        return self._of("linear")

    @property
    def attention(self) -> int:
        """The attention products QKᵀ and AV (not the q/k/v/out projections, which are ``linear``)."""
        return self._of("attention")

    def scaled(self, factor: float) -> FlopCount:
        return FlopCount({k: round(v * factor) for k, v in self.by_op.items()})

    def to_dict(self, unit: float = 1e9) -> dict[str, float]:
        """``total``, ``conv``, ``linear``, ``attention`` and ``without_attention`` in ``unit`` (GFLOP)."""
        parts = {"total": self.total, "conv": self.conv, "linear": self.linear, "attention": self.attention}
        parts["without_attention"] = self.total - self.attention
        return {k: round(v / unit, 3) for k, v in parts.items()}


def _kind(op: str) -> str:
    name = op.split(".")[-1]
    if "conv" in name:
        return "conv"
    if any(a in name for a in ATTENTION_OPS):
        return "attention"
    return "linear" if name in LINEAR_OPS else "other"


@torch.no_grad()
def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of ``fn(*args, **kwargs)`` (real or meta tensors) under ``FlopCounterMode``."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        fn(*args, **kwargs)
    return FlopCount({str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()})


# --------------------------------------------------------------------------------------------------- the networks


def unet_flops(
    config: VideoUNetConfig, height: int, width: int, frames: int = 1, batch: int = 1, vae_factor: int = 8
) -> FlopCount:
    """One UNet forward on ``(batch, C, frames, height/8, width/8)`` latents (77 condition tokens); a student
    config (``guidance_embedding``) gets its g input."""
    with torch.device("meta"):
        unet = VideoUNet(config)
        x = torch.empty(batch, config.in_channels, frames, height // vae_factor, width // vae_factor)
        t = torch.full((batch,), 500.0)
        cond = torch.empty(batch, 77, config.cross_attention_dim)
        extra = {"guidance": torch.full((batch,), 4.0)} if config.guidance_embedding else {}
    return count_flops(unet, x, t, cond, **extra)


def vae_decoder_flops(vae_config: Mapping[str, Any], height: int, width: int) -> FlopCount:
    """``vae.decode`` of one frame (post-quant conv + decoder) of a diffusers ``AutoencoderKL`` config dict."""
    from diffusers import AutoencoderKL

    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
        z = torch.empty(1, vae_config.get("latent_channels", 4), height // factor, width // factor)
    return count_flops(vae.decode, z)


def tiny_decoder_flops(config: TinyDecoderConfig, height: int, width: int) -> FlopCount:
    """The tiny decoder on one frame."""
    with torch.device("meta"):
        decoder = TinyDecoder(config)
        z = torch.empty(1, config.latent_channels, height // config.factor, width // config.factor)
    return count_flops(decoder, z)


# --------------------------------------------------------------------------------------------------- one clip


def flops_per_clip(
    unet_config: VideoUNetConfig,
    vae_config: Mapping[str, Any],
    tiny_config: TinyDecoderConfig,
    *,
    height: int = 256,
    width: int = 256,
    frames: int = 60,
    teacher_steps: int = 25,
    student_steps: int = 4,
    rate: float = BF16_RATE,
    seconds_of_brain_data: float = 2.0,
) -> dict[str, Any]:
    """The FLOPs of one clip of ``frames`` frames for the guided teacher (2 UNet passes × ``teacher_steps``), the
    single-pass student (1 pass × ``student_steps``) with the VAE decoder, and the student with the tiny decoder;
    each with its floor time at ``rate`` FLOP/s (100 % of the matrix rate) and real-time factor (floor / TR).

    The UNet is counted once on the whole clip (batch 1, ``frames`` frames: temporal attention grows with F), the
    decoders per frame. Returns ``settings``, ``per_frame_gflop`` (each network's :meth:`FlopCount.to_dict`) and
    ``clips`` (one row per configuration, TFLOP)."""
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    teacher = unet_flops(unet_config, height, width, frames, vae_factor=factor)
    student = unet_flops(unet_config.replace(guidance_embedding=True), height, width, frames, vae_factor=factor)
    vae = vae_decoder_flops(vae_config, height, width)
    tiny = tiny_decoder_flops(tiny_config, height, width)
    per_frame = {
        "unet": teacher.scaled(1 / frames).to_dict(),
        "unet_student": student.scaled(1 / frames).to_dict(),
        "vae_decoder": vae.to_dict(),
        "tiny_decoder": tiny.to_dict(),
    }
    rows = [
        ("teacher: 2 passes (guidance) + VAE decoder", teacher.total, 2, teacher_steps, vae.total),
        ("student: 1 pass + VAE decoder", student.total, 1, student_steps, vae.total),
        ("student: 1 pass + tiny decoder", student.total, 1, student_steps, tiny.total),
    ]
    clips = [_clip_row(name, u, p, s, d * frames, rate, seconds_of_brain_data) for name, u, p, s, d in rows]
    settings = {
        "height": height,
        "width": width,
        "frames": frames,
        "teacher_steps": teacher_steps,
        "student_steps": student_steps,
        "rate_tflops": rate / 1e12,
        "seconds_of_brain_data": seconds_of_brain_data,
        "counter": "torch.utils.flop_counter.FlopCounterMode on meta tensors (multiply-adds x 2)",
    }
    return {"settings": settings, "per_frame_gflop": per_frame, "clips": clips}


def _clip_row(
    name: str, unet: int, passes: int, steps: int, decoder: int, rate: float, tr_seconds: float
) -> dict[str, Any]:
    unet_total = unet * passes * steps
    total = unet_total + decoder
    floor = total / rate
    return {
        "configuration": name,
        "unet_passes": passes,
        "steps": steps,
        "unet_tflop": round(unet_total / 1e12, 4),
        "decoder_tflop": round(decoder / 1e12, 4),
        "total_tflop": round(total / 1e12, 4),
        "decoder_share": round(decoder / total, 3),
        "floor_seconds": round(floor, 5),
        "real_time_factor": round(floor / tr_seconds, 5),
    }


def sd15_flops(**kwargs: Any) -> dict[str, Any]:
    """:func:`flops_per_clip` for the SD-1.5 video UNet, SD-1.5's VAE and the default tiny decoder for it."""
    from mindvideo.checkpoint import sd15_vae_config

    vae = sd15_vae_config()
    return flops_per_clip(VideoUNetConfig.sd15(), vae, TinyDecoderConfig.for_vae(vae), **kwargs)


def markdown_table(report: dict[str, Any]) -> str:
    """The ``clips`` rows of :func:`flops_per_clip` as a Markdown table."""
    s = report["settings"]
    head = (
        f"| {s['frames']} frames at {s['width']}×{s['height']} | UNet passes × steps | UNet TFLOP | decoder TFLOP "
        f"| total TFLOP | floor at {s['rate_tflops']:g} TFLOP/s | real-time factor |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in report["clips"]:
        lines.append(
            f"| {r['configuration']} | {r['unet_passes']} × {r['steps']} | {r['unet_tflop']:.1f} "
            f"| {r['decoder_tflop']:.1f} | {r['total_tflop']:.1f} | {r['floor_seconds']:.3f} s "
            f"| {r['real_time_factor']:.3f} |"
        )
    return "\n".join(lines)
