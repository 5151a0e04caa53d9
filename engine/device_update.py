"""The fused guidance + sampler update on torch tensors: one Triton kernel on CUDA, plain torch elsewhere.

Same maths, signature and arithmetic as :func:`mindvideo.engine.host_loop_numpy.fused_update`::

    m = eps_neg + g·(eps_pos − eps_neg);   d = p·x + q·m;   x ← a·x + b·m + c·d + e·state + n·noise;   state ← d

The Triton kernel (:mod:`mindvideo.engine.device_update_triton`) is imported on first use, never at import time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

from mindvideo.errors import MindVideoError

from .host_loop_numpy import as_coefficients

log = logging.getLogger(__name__)

EPS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_update_tensors(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    state: torch.Tensor | None,
    noise: torch.Tensor | None,
    *,
    stateful: bool,
    noisy: bool,
) -> None:
    """Raise :class:`MindVideoError` unless the update's tensors fit: ``x``/``state`` float32, model outputs and
    noise float32/fp16/bf16, all contiguous, same shape and device; ``state``/``noise`` present when needed."""
    named = {"x": x, "eps_pos": eps_pos, "eps_neg": eps_neg, "state": state, "noise": noise}
    if stateful and state is None:
        raise MindVideoError(
            "expected a state buffer for a multistep step",
            "state=None",
            "pass torch.zeros_like(x) and keep it across steps",
        )
    if noisy and noise is None:
        raise MindVideoError(
            "expected a noise draw for a stochastic step (DDIM eta > 0)", "noise=None", "pass torch.randn_like(x)"
        )
    for name, t in named.items():
        if t is None:
            continue
        allowed = (torch.float32,) if name in ("x", "state") else EPS_DTYPES
        if not isinstance(t, torch.Tensor) or t.dtype not in allowed:
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise MindVideoError(
                f"expected {name} as a tensor of dtype {' / '.join(map(str, allowed))}",
                str(found),
                f"convert it with {name}.float()",
            )
        if not t.is_contiguous():
            raise MindVideoError(f"expected {name} contiguous", "a non-contiguous view", f"pass {name}.contiguous()")
        if t.shape != x.shape or t.device != x.device:
            raise MindVideoError(
                f"expected {name} of shape {tuple(x.shape)} on {x.device}",
                f"shape {tuple(t.shape)} on {t.device}",
                "match the latents",
            )


@torch.no_grad()
def fused_update_torch(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    guidance_scale: float,
    coefficients: Sequence[float],
    state: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> None:
    """The update in plain torch ops (any device), in place on ``x`` and ``state``: the reference for the kernel."""
    k = as_coefficients(coefficients)
    check_update_tensors(x, eps_pos, eps_neg, state, noise, stateful=k.stateful, noisy=k.n != 0.0)
    m = eps_pos.double()
    if eps_neg is not None:
        m_neg = eps_neg.double()
        m = m_neg + guidance_scale * (m - m_neg)
    x64 = x.double()
    y = k.a * x64 + k.b * m
    if k.stateful:
        d = k.p * x64 + k.q * m
        y += k.c * d
        y += k.e * state.double()
        state.copy_(d)
    if k.n != 0.0:
        y += k.n * noise.double()
    x.copy_(y)


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (checked once; never imports it at module import)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_update_triton(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    guidance_scale: float,
    coefficients: Sequence[float],
    state: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> None:
    """The update as one Triton kernel launch (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    from .device_update_triton import launch_fused_update

    launch_fused_update(x, eps_pos, eps_neg, guidance_scale, coefficients, state, noise)


def fused_update_tensor(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    guidance_scale: float,
    coefficients: Sequence[float],
    state: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> None:
    """The update on torch tensors: the Triton kernel for CUDA tensors when Triton is installed, else torch."""
    if x.is_cuda and triton_available():
        fused_update_triton(x, eps_pos, eps_neg, guidance_scale, coefficients, state, noise)
    else:
        fused_update_torch(x, eps_pos, eps_neg, guidance_scale, coefficients, state, noise)
