"""The public attention ops (dispatching through the registry) and the Triton backends' registration."""

from __future__ import annotations

from typing import Any

import torch

from . import checks
from . import cpu as _cpu  # noqa: F401  (registers the C kernel's backend)
from . import reference as _reference  # noqa: F401  (registers the torch backends)
from .reference import FrameOffsets
from .registry import dispatch, register


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


# --- the Triton backend: predicates here (cheap, Triton-free), kernels imported on first call ------------------------
def _triton_device_ok(q: Any, interpreter: bool) -> bool:
    """``triton`` takes fp16/bf16 CUDA tensors; ``triton-interpret`` CPU tensors, and only under TRITON_INTERPRET=1."""
    if not isinstance(q, torch.Tensor):
        return False
    if interpreter:
        on_device = q.device.type == "cpu" and checks.interpreting()
    else:
        on_device = q.is_cuda and q.dtype in checks.GPU_DTYPES
    # the ONNX graph (and TorchScript) must hold plain ops, not a Triton launch
    exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    return on_device and not exporting and checks.triton_installed()


def _sparse_causal_supports(interpreter: bool):
    def supports(q, k, v, num_frames, frame_offsets=(-2, -1), scale=None) -> bool:
        return (
            _triton_device_ok(q, interpreter)
            and checks.sparse_causal_problem(q, k, v, num_frames, frame_offsets) is None
        )

    return supports


def _temporal_supports(interpreter: bool):
    def supports(q, k, v, scale=None) -> bool:
        return _triton_device_ok(q, interpreter) and checks.temporal_problem(q, k, v) is None

    return supports


def _sparse_causal_triton(q, k, v, num_frames, frame_offsets=(-2, -1), scale=None) -> torch.Tensor:
    from .sparse_causal import sparse_causal_attention as run

    return run(q, k, v, num_frames, frame_offsets, scale)


def _temporal_triton(q, k, v, scale=None) -> torch.Tensor:
    from .temporal import temporal_attention as run

    return run(q, k, v, scale)


for _name, _priority, _interpreter in (("triton", 20, False), ("triton-interpret", -10, True)):
    register("sparse_causal_attention", _name, priority=_priority, supports=_sparse_causal_supports(_interpreter))(
        _sparse_causal_triton
    )
    register("temporal_attention", _name, priority=_priority, supports=_temporal_supports(_interpreter))(
        _temporal_triton
    )
del _name, _priority, _interpreter
