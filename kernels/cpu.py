"""The ``cpu`` backends: the fused C kernels of ``kernels/csrc/attention_cpu.c`` as torch ops.

On the CPU in fp32 the torch forms of both attentions write and re-read score tensors that fall out of the cache at
the demo size (60 frames, 8×8 latents), and sparse-causal attention first gathers and concatenates its key/value
frames; the C kernels read q, k, v in place and keep each block's scores in L1. They are ``torch.library`` ops,
``mindvideo::temporal_attention_cpu`` and ``mindvideo::sparse_causal_attention_cpu``, so that a ``torch.jit.trace``
of the UNet (the engine's frozen UNet) records each as one node and ``torch.compile`` sees their output shapes.

They are inference kernels for short blocks: inputs that need a gradient, other dtypes or devices, blocks of more
than :data:`MAX_BLOCK_SCORES` scores (where a block's scores leave the L2 cache and torch's tiled SDPA kernel is the
better tool), and the ONNX export (which must hold plain ops) go to the next backend, as does everything when the
extension was not built (no C compiler at install time).
"""

from __future__ import annotations

import numpy as np
import torch

from . import checks
from .reference import FrameOffsets, encode_offsets, source_frames
from .registry import register

try:
    from . import _attention_cpu
except ImportError:  # built without a C compiler: the backends decline every input
    _attention_cpu = None

MAX_BLOCK_SCORES = 1 << 16  # keys × queries of one (batch, head) block: 256 KiB of fp32 scores
MAX_SOURCES = 8  # sparse-causal source frames per query frame (the C kernel's limit)


def available() -> bool:
    """Whether the C extension was built."""
    return _attention_cpu is not None


def _views(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors]


@torch.library.custom_op("mindvideo::temporal_attention_cpu", mutates_args=())
def temporal_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale·q·kᵀ)·v`` across frames; ``q, k, v``: ``(B·N, heads, F, d)`` fp32 CPU tensors with any
    strides; the output is contiguous. Runs on ``torch.get_num_threads()`` threads."""
    out = torch.empty(q.shape, dtype=torch.float32)
    _attention_cpu.temporal_attention(*_views(q, k, v, out), scale, torch.get_num_threads())
    return out


@torch.library.custom_op("mindvideo::sparse_causal_attention_cpu", mutates_args=())
def sparse_causal_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, offsets: list[int], scale: float
) -> torch.Tensor:
    """Frame ``f``'s queries over the keys/values of frames ``clamp(f + o, 0, F-1)``; ``q, k, v``: ``(B·F, heads,
    N, d)`` fp32 CPU tensors with any strides; ``offsets`` as :func:`~mindvideo.kernels.reference.encode_offsets`
    gives them. The output is contiguous. Runs on ``torch.get_num_threads()`` threads."""
    out = torch.empty(q.shape, dtype=torch.float32)
    sources = np.ascontiguousarray(source_frames(num_frames, offsets).numpy(), dtype=np.int64)
    _attention_cpu.sparse_causal_attention(*_views(q, k, v, out), sources, scale, torch.get_num_threads())
    return out


@temporal_attention_cpu.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return q.new_empty(q.shape)


@sparse_causal_attention_cpu.register_fake
def _(q, k, v, num_frames: int, offsets: list[int], scale: float) -> torch.Tensor:
    return q.new_empty(q.shape)


def _inference_fp32(q, k, v) -> bool:
    """The extension built; fp32 CPU tensors of one 4-D shape; no gradient needed; not inside an ONNX export."""
    tensors = (q, k, v)
    if _attention_cpu is None or not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or t.shape != q.shape for t in tensors):
        return False
    if q.dim() != 4 or q.numel() == 0:
        return False
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return not wants_grad and not torch.onnx.is_in_onnx_export()


def temporal_supports(q, k, v, scale=None) -> bool:
    return _inference_fp32(q, k, v) and q.shape[2] ** 2 <= MAX_BLOCK_SCORES


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _frames(num_frames) -> int:
    """``num_frames`` as an int: under ``torch.jit.trace`` a size read off a tensor arrives as a 0-d tensor (the
    trace then holds its value, as it holds every shape: the frozen UNet keeps one trace per shape)."""
    integral = isinstance(num_frames, torch.Tensor) and num_frames.numel() == 1 and num_frames.dtype in _INT_DTYPES
    return int(num_frames) if integral else num_frames


def sparse_causal_supports(q, k, v, num_frames, frame_offsets=(-2, -1), scale=None) -> bool:
    num_frames = _frames(num_frames)
    if not _inference_fp32(q, k, v) or checks.sparse_causal_problem(q, k, v, num_frames, frame_offsets):
        return False
    try:
        encode_offsets(frame_offsets)  # offsets of magnitude ≥ 2³⁰: the reference's path (it clamps them)
    except ValueError:
        return False
    sources = len(tuple(frame_offsets))
    return sources <= MAX_SOURCES and sources * q.shape[2] ** 2 <= MAX_BLOCK_SCORES


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


@register("temporal_attention", "cpu", priority=15, supports=temporal_supports)
def temporal_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The fused C kernel (see the module docstring)."""
    return torch.ops.mindvideo.temporal_attention_cpu(q, k, v, _scale(q, scale))


@register("sparse_causal_attention", "cpu", priority=15, supports=sparse_causal_supports)
def sparse_causal_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
) -> torch.Tensor:
    """The fused C kernel (see the module docstring): key/value frames read in place, no gather."""
    offsets = list(encode_offsets(frame_offsets))
    return torch.ops.mindvideo.sparse_causal_attention_cpu(q, k, v, _frames(num_frames), offsets, _scale(q, scale))
