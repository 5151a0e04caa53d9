"""What the Triton attention kernels accept, checked without importing Triton.

One source of truth for two callers: the launchers in :mod:`.sparse_causal` / :mod:`.temporal` raise
``ValueError(problem)`` with the message, and the registry predicates in :mod:`mindvideo.kernels` turn "no problem"
into ``supports() is True``. Nothing here imports Triton or touches CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# What the registry routes to the kernels on CUDA: fp32 products run on CUDA cores there (IEEE, like the reference)
# and only small tiles avoid register spills, so fp32 on a GPU goes to SDPA; the launchers still accept it.
GPU_DTYPES = (torch.float16, torch.bfloat16)
# Head dims are padded in registers to the next power of two (at least 16, the smallest tensor-core K);
# 256 is the largest tile that still leaves room for the K/V pipeline in shared memory.
MAX_HEAD_DIM = 256
# One temporal program holds a whole (frames × frames) score tile: 128 × 128 fp32 is the largest we allow, and
# above 64 frames the head dim must stay ≤ 128 (the q/k/v tiles of one position must fit as well).
MAX_FRAMES = 128
MAX_TEMPORAL_TILE = 128 * 128

_TRUE = ("1", "true", "on", "yes", "y")


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (parsed as Triton parses it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


@functools.cache
def triton_installed() -> bool:
    """Whether ``import triton`` would work, without importing it."""
    return importlib.util.find_spec("triton") is not None


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def block_d(head_dim: int) -> int:
    """The register tile width for ``head_dim``: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, next_pow2(head_dim))


def device_problem(q: torch.Tensor) -> str | None:
    """CUDA tensors compile; CPU tensors run only under Triton's interpreter."""
    if q.is_cuda or (q.device.type == "cpu" and interpreting()):
        return None
    return f"expected CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {q.device}"


def _qkv_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> str | None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            return f"expected {name} shaped {layout}, got {shape}"
    if not (q.shape == k.shape == v.shape):
        return f"expected q, k, v of one shape {layout}, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        return f"expected q, k, v all float16, bfloat16 or float32, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not (q.device == k.device == v.device):
        return f"expected q, k, v on one device, got {q.device}, {k.device}, {v.device}"
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        return f"expected a head dim in 1…{MAX_HEAD_DIM}, got {q.shape[-1]}"
    if 0 in q.shape:
        return f"expected non-empty q, k, v, got {tuple(q.shape)}"
    return None


def sparse_causal_problem(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, frame_offsets: Sequence[int | None]
) -> str | None:
    """Why the sparse-causal kernel cannot take these inputs, or ``None`` if it can."""
    problem = _qkv_problem(q, k, v, "(B·F, heads, N, d)")
    if problem:
        return problem
    if not isinstance(num_frames, int) or num_frames < 1 or q.shape[0] % num_frames:
        return f"expected num_frames ≥ 1 dividing the leading dim B·F = {q.shape[0]}, got {num_frames!r}"
    offsets = tuple(frame_offsets)
    if not offsets or not all(o is None or (isinstance(o, int) and not isinstance(o, bool)) for o in offsets):
        return f"expected frame_offsets as a non-empty sequence of ints or None (= first frame), got {offsets!r}"
    return None


def temporal_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the temporal kernel cannot take these inputs, or ``None`` if it can."""
    problem = _qkv_problem(q, k, v, "(B·N, heads, F, d)")
    if problem:
        return problem
    frames = q.shape[2]
    if frames > MAX_FRAMES or next_pow2(max(frames, 16)) * block_d(q.shape[-1]) > MAX_TEMPORAL_TILE:
        return (
            f"expected at most {MAX_FRAMES} frames (64 when the head dim is above 128) for the temporal kernel, "
            f"got {frames} frames with head dim {q.shape[-1]}"
        )
    return None
