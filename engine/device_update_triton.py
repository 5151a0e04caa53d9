"""Triton kernel for the fused guidance + sampler update (imported lazily by :mod:`mindvideo.engine.device_update`).

One pass over the latents: each program loads a block of ``x``, the model outputs (fp32/fp16/bf16), the
data-prediction state and the noise when the step uses them, evaluates the update in float64 like the C and numpy
twins, and stores ``x`` (and ``state``) as float32. The step's parameters ``[g, a, b, c, e, p, q, n]`` are read from
a float64 device buffer rather than passed as (float32) scalars: full precision, and a whole-loop CUDA graph can
point each captured step at its own row of :func:`plan_parameters`.

The kernel is memory-bound (at most 28 bytes per element), so there is no autotuning: a fixed 1024-element block
with 4 warps keeps loads vectorised, and autotuning an in-place kernel would need ``restore_value`` copies that
cost more than they could win. ``enable_fp_fusion=False`` keeps multiplies and adds separately rounded, as in C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mindvideo.errors import MindVideoError

from .host_loop_numpy import as_coefficients
from .schedule import SamplingPlan
from .update_checks import check_update_tensors

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def fused_update_kernel(
    x_ptr,
    pos_ptr,
    neg_ptr,
    state_ptr,
    noise_ptr,
    params_ptr,
    n_elements,
    GUIDED: tl.constexpr,
    STATEFUL: tl.constexpr,
    NOISY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    g, a, b = tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2)  # float64 scalars
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float64)
    m = tl.load(pos_ptr + offsets, mask=mask).to(tl.float64)
    if GUIDED:  # classifier-free guidance: m = m_neg + g·(m_pos − m_neg)
        m_neg = tl.load(neg_ptr + offsets, mask=mask).to(tl.float64)
        m = m_neg + g * (m - m_neg)
    y = a * x + b * m
    if STATEFUL:  # multistep: data prediction d = p·x + q·m; the previous one is in the state buffer
        c, e = tl.load(params_ptr + 3), tl.load(params_ptr + 4)
        p, q = tl.load(params_ptr + 5), tl.load(params_ptr + 6)
        d = p * x + q * m
        y = y + c * d
        y = y + e * tl.load(state_ptr + offsets, mask=mask).to(tl.float64)
        tl.store(state_ptr + offsets, d.to(tl.float32), mask=mask)
    if NOISY:
        n = tl.load(params_ptr + 7)
        y = y + n * tl.load(noise_ptr + offsets, mask=mask).to(tl.float64)
    tl.store(x_ptr + offsets, y.to(tl.float32), mask=mask)


def step_parameters(guidance_scale: float, coefficients: Sequence[float], device: torch.device) -> torch.Tensor:
    """The kernel's parameter row ``[g, a, b, c, e, p, q, n]`` (float64) on ``device``."""
    return torch.tensor([guidance_scale, *as_coefficients(coefficients)], dtype=torch.float64, device=device)


def plan_parameters(plan: SamplingPlan, guidance_scale: float, device: torch.device | str) -> torch.Tensor:
    """``(S, 8)`` float64 parameter rows for every step of ``plan``: upload once, pass ``params[i]`` per step."""
    rows = torch.tensor(plan.coefficients, dtype=torch.float64)
    return torch.cat([torch.full((plan.num_steps, 1), float(guidance_scale), dtype=torch.float64), rows], 1).to(device)


def _check_params(params: torch.Tensor, device: torch.device) -> torch.Tensor:
    if params.dtype != torch.float64 or params.shape != (8,) or params.device != device or not params.is_contiguous():
        raise MindVideoError(
            f"expected params as 8 contiguous float64 values on {device}",
            f"{params.dtype} {tuple(params.shape)} on {params.device}",
            "pass a row of plan_parameters(plan, guidance_scale, device)",
        )
    return params


def launch_fused_update(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    guidance_scale: float,
    coefficients: Sequence[float],
    state: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    *,
    params: torch.Tensor | None = None,
) -> None:
    """Check the tensors and launch :func:`fused_update_kernel` once, in place on ``x`` (and ``state``).

    ``params`` (8,) float64 on ``x``'s device replaces ``guidance_scale``/``coefficients`` on the device side (the
    host copies are still used to pick the kernel variant) — for callers that keep a :func:`plan_parameters` table.
    """
    k = as_coefficients(coefficients)
    stateful, noisy = k.stateful, k.n != 0.0
    check_update_tensors(x, eps_pos, eps_neg, state, noise, stateful=stateful, noisy=noisy)
    params = step_parameters(guidance_scale, k, x.device) if params is None else _check_params(params, x.device)
    numel = x.numel()
    if numel >= 2**31:
        raise MindVideoError("expected fewer than 2**31 latent elements per update", f"{numel}", "split the batch")
    if numel == 0:
        return
    fused_update_kernel[(triton.cdiv(numel, BLOCK),)](
        x,
        eps_pos,
        eps_neg if eps_neg is not None else eps_pos,
        state if stateful else x,
        noise if noisy else x,
        params,
        numel,
        GUIDED=eps_neg is not None,
        STATEFUL=stateful,
        NOISY=noisy,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
