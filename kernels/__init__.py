"""Attention kernels for the video UNet, behind a backend registry.

``sparse_causal_attention`` and ``temporal_attention`` dispatch to the best registered backend that accepts the
inputs (see :mod:`mindvideo.kernels.registry`). Importing this package never touches CUDA and never needs Triton.
"""

from __future__ import annotations

import torch

from . import reference as _reference  # noqa: F401  (registers the torch backends)
from .reference import FrameOffsets, gather_frames, source_frames
from .registry import backends, dispatch, register, select, use_backend


def sparse_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Scene-dynamic sparse-causal attention; ``q, k, v, out``: ``(B·F, heads, N, d)``.

    Frame ``f`` attends over frames ``clamp(f + o, 0, F-1)`` for ``o`` in ``frame_offsets`` (``None`` = frame 0).
    """
    return dispatch("sparse_causal_attention", q, k, v, num_frames, frame_offsets, scale, backend=backend)


def temporal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Attention across frames at each spatial position; ``q, k, v, out``: ``(B·N, heads, F, d)``."""
    return dispatch("temporal_attention", q, k, v, scale, backend=backend)


__all__ = [
    "FrameOffsets",
    "backends",
    "gather_frames",
    "register",
    "select",
    "source_frames",
    "sparse_causal_attention",
    "temporal_attention",
    "use_backend",
]
