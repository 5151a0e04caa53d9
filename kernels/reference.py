"""Torch implementations of the video attentions: the plain reference (the oracle) and SDPA.

Layouts (shared with the Triton kernels):

* sparse-causal attention: ``q, k, v`` are ``(B·F, heads, N, d)``, frame-major inside each batch item. The queries of
  frame ``f`` attend over the keys/values of frames ``clamp(f + o, 0, F-1)`` for each offset ``o`` in
  ``frame_offsets``, concatenated along the key axis (MinD-Video §3.3; offsets ``(-2, -1)``; Tune-A-Video's
  first-frame + previous-frame variant is ``frame_offsets=("first", -1)`` written as ``(None, -1)``).
* temporal attention: ``q, k, v`` are ``(B·N, heads, F, d)``: full attention across frames at each position.

The reference is written as the graph TensorRT's attention fusion recognises after ONNX export: a Gather/Concat of
frames, Q pre-scaled, then MatMul → Softmax → MatMul, accumulating in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .registry import register

FrameOffsets = Sequence[int | None]

# CUDA SDPA kernels launch one block row per (batch·head); keep each call below the grid limit.
_SDPA_MAX_BATCH_HEADS = 32768
# temporal attention on the CPU: up to this many scores per call (16 MiB in fp32) plain products beat the SDPA kernel
_CPU_MATMUL_SCORES = 1 << 22

# ``None`` ("the first frame") as a plain int offset, for kernels that take the offsets as compile-time ints (the
# TensorRT plugin): ``clamp(f + FIRST_FRAME, 0, F-1) = 0`` for every frame ``f < 2**30``, and ``f + o`` stays inside
# int32 for every offset ``encode_offsets`` accepts.
FIRST_FRAME = -(1 << 30)


def source_frames(num_frames: int, frame_offsets: FrameOffsets, device: torch.device | None = None) -> torch.Tensor:
    """``(len(offsets), F)`` int64: for each offset, the clamped source frame of every query frame.

    An offset of ``None`` means "the first frame" (Tune-A-Video's anchor frame).
    """
    f = torch.arange(num_frames, device=device)
    rows = [torch.zeros_like(f) if o is None else (f + int(o)).clamp(0, num_frames - 1) for o in frame_offsets]
    return torch.stack(rows)


def encode_offsets(frame_offsets: FrameOffsets) -> tuple[int, ...]:
    """``frame_offsets`` as ints only: ``None`` becomes :data:`FIRST_FRAME`; both give the same :func:`source_frames`.

    Idempotent: already encoded offsets (``FIRST_FRAME`` among them, as a TensorRT plugin attribute holds them) pass
    through. Raises ``ValueError`` for an empty sequence, a non-int entry, or any other offset of magnitude ``2**30``
    or more (it could overflow the kernel's int32 ``frame + offset``).
    """
    offsets = tuple(frame_offsets)
    ints = all(isinstance(o, int) and not isinstance(o, bool) for o in offsets if o is not None)
    if not offsets or not ints or any(o is not None and o != FIRST_FRAME and abs(o) >= -FIRST_FRAME for o in offsets):
        raise ValueError(
            f"expected frame_offsets as a non-empty sequence of ints in (-2**30, 2**30) or None (= first frame), "
            f"got {offsets!r}"
        )
    return tuple(FIRST_FRAME if o is None else o for o in offsets)


def gather_frames(x: torch.Tensor, num_frames: int, frame_offsets: FrameOffsets) -> torch.Tensor:
    """``(B·F, h, N, d)`` → ``(B·F, h, len(offsets)·N, d)``: each frame's key/value context."""
    bf, h, n, d = x.shape
    x = x.reshape(bf // num_frames, num_frames, h, n, d)  # (B, F, h, N, d)
    index = source_frames(num_frames, frame_offsets, x.device)
    parts = [x.index_select(1, row) for row in index]  # each (B, F, h, N, d)
    return torch.cat(parts, dim=3).reshape(bf, h, len(index) * n, d)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v with fp32 accumulation; returns q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = q.float() * scale, k.float(), v.float()
    probs = torch.softmax(qf @ kf.transpose(-1, -2), dim=-1)
    return (probs @ vf).to(q.dtype)


@register("sparse_causal_attention", "reference", priority=0)
def sparse_causal_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
) -> torch.Tensor:
    """Plain gather/concat + matmul/softmax attention (the oracle)."""
    return _attention(
        q, gather_frames(k, num_frames, frame_offsets), gather_frames(v, num_frames, frame_offsets), scale
    )


@register("temporal_attention", "reference", priority=0)
def temporal_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain matmul/softmax attention across frames (the oracle)."""
    return _attention(q, k, v, scale)


def _sdpa_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    rows = max(1, _SDPA_MAX_BATCH_HEADS // q.shape[1])
    if q.shape[0] <= rows:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return torch.cat(
        [
            F.scaled_dot_product_attention(q[i : i + rows], k[i : i + rows], v[i : i + rows], scale=scale)
            for i in range(0, q.shape[0], rows)
        ]
    )


@register("sparse_causal_attention", "sdpa", priority=10)
def sparse_causal_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
) -> torch.Tensor:
    """Gather/concat of K/V frames, then ``F.scaled_dot_product_attention`` (chunked over the batch)."""
    return _sdpa_chunked(
        q, gather_frames(k, num_frames, frame_offsets), gather_frames(v, num_frames, frame_offsets), scale
    )


@register("temporal_attention", "sdpa", priority=10)
def temporal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` across frames (chunked over the batch). On the CPU in fp32, a call with at
    most :data:`_CPU_MATMUL_SCORES` scores runs as the reference's three plain products instead: the fused CPU kernel
    loses to them on short frame sequences (demo UNet at 60 frames: 1.8 against 2.8 ms per call on one thread)."""
    scores = q.shape[:-1].numel() * k.shape[-2]
    if q.device.type == "cpu" and q.dtype == torch.float32 and scores <= _CPU_MATMUL_SCORES:
        return _attention(q, k, v, scale)
    return _sdpa_chunked(q, k, v, scale)
