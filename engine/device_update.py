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

from .host_loop_numpy import as_coefficients
from .update_checks import check_update_tensors

log = logging.getLogger(__name__)


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
