"""Temporal attention (attention across frames at each spatial position) as one Triton kernel.

The temporal layers of the video UNet (MinD-Video §3.3) attend over a very short sequence — the F frames, 2…64 —
at a very large batch — B·h·w positions times the heads, up to ~10⁶ (batch, head) pairs. Generic attention kernels
tile the sequence and launch one block row per (batch, head): here that is a grid of tiny, mostly idle programs.
This kernel fuses the whole attention of several positions into one program instead: it packs the F frames of
``BLOCK_R // F`` positions into one ``BLOCK_R``-row tile, computes the ``BLOCK_R × BLOCK_R`` scores with one
tensor-core product, masks everything off the block diagonal (a row may only see the frames of its own position),
and finishes softmax and the value product in registers. No online softmax is needed: a whole sequence fits.

The extra products off the diagonal should cost little: at about F/2 FLOP per byte the op is bound by memory, not by
the tensor cores, and every q/k/v element is still read exactly once (benchmarks/triton_kernels.py measures it on a
GPU).

Layout (shared with :mod:`.reference`): ``q, k, v, out`` are ``(B·N, heads, F, d)``, any strides.

File order: jit kernel → autotune list → launcher with checks (:func:`temporal_attention_fwd`) → autograd wrapper
(:func:`temporal_attention`). Import this module only where Triton is installed; the package imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import checks
from .reference import temporal_sdpa
from .sparse_causal import LOG2E, dot_precision


# ---------------------------------------------------------------------------------------------------------------------
# 1. the kernel
# ---------------------------------------------------------------------------------------------------------------------
@triton.jit
def _temporal_fwd_kernel(
    Q, K, V, Out,
    qk_scale,  # softmax scale · log2(e)
    stride_qb, stride_qh, stride_qf, stride_qd,
    stride_kb, stride_kh, stride_kf, stride_kd,
    stride_vb, stride_vh, stride_vf, stride_vd,
    stride_ob, stride_oh, stride_of, stride_od,
    num_heads, num_pos,  # num_pos = B·N·heads (batch, head) pairs
    FRAMES: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # 1. rows of the tile: row r is frame r % F of position pid·P + r // F, P = BLOCK_R // F positions per tile;
    #    consecutive positions are the heads of one token, so a tile reads contiguous memory in the UNet layout
    rows = tl.arange(0, BLOCK_R)
    slot = rows // FRAMES  # which of the tile's positions
    pos = tl.program_id(0) * (BLOCK_R // FRAMES) + slot
    frame = rows % FRAMES
    mask_r = (slot < BLOCK_R // FRAMES) & (pos < num_pos)
    batch = (pos // num_heads).to(tl.int64)
    head = pos % num_heads
    offs_d = tl.arange(0, BLOCK_D)
    mask = mask_r[:, None] & (offs_d[None, :] < HEAD_DIM)  # head dims are padded in registers, never in memory

    q_ptrs = Q + (batch * stride_qb + head * stride_qh + frame * stride_qf)[:, None] + offs_d[None, :] * stride_qd
    k_ptrs = K + (batch * stride_kb + head * stride_kh + frame * stride_kf)[:, None] + offs_d[None, :] * stride_kd
    v_ptrs = V + (batch * stride_vb + head * stride_vh + frame * stride_vf)[:, None] + offs_d[None, :] * stride_vd
    q = tl.load(q_ptrs, mask=mask, other=0.0)
    k = tl.load(k_ptrs, mask=mask, other=0.0)
    v = tl.load(v_ptrs, mask=mask, other=0.0)

    # 2. scores of every row against every row, then keep the block diagonal (same position). Each row keeps at
    #    least itself, so no row is all -inf, padding rows included (they are zeros and are never stored).
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_R, BLOCK_R)
    s = tl.where(slot[:, None] == slot[None, :], s, float("-inf"))

    # 3. plain softmax (the whole sequence is in the tile) and the value product
    p = tl.exp2(s - tl.max(s, 1)[:, None])
    denom = tl.sum(p, 1)
    o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION) / denom[:, None]

    o_ptrs = Out + (batch * stride_ob + head * stride_oh + frame * stride_of)[:, None] + offs_d[None, :] * stride_od
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------------
# 2. autotuning: the tile height decides how many positions share one program
# ---------------------------------------------------------------------------------------------------------------------
# (BLOCK_R, num_warps): compiled ahead of time for sm_90 without spill stack for 16-bit inputs up to the tile
# budget of checks.MAX_TEMPORAL_TILE. fp32 (CUDA-core products) gets more warps per row; its tall tiles with wide
# heads still spill, and the registry sends fp32 on CUDA to SDPA — the fp32 tiles serve direct calls and tests.
_TILES_16BIT = [(16, 1), (32, 2), (64, 4), (128, 8)]
_TILES_FP32 = [(16, 4), (32, 4), (64, 8), (128, 8)]
_CONFIGS = [
    triton.Config({"BLOCK_R": r}, num_warps=w, num_stages=1) for r, w in dict.fromkeys(_TILES_16BIT + _TILES_FP32)
]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Tiles of this dtype that hold at least one whole sequence and whose q/k/v rows fit the budget."""
    frames, width = (named_args.get(name, kwargs.get(name)) for name in ("FRAMES", "BLOCK_D"))
    fp32 = "Q" in named_args and named_args["Q"].element_size() == 4
    wanted = _TILES_FP32 if fp32 else _TILES_16BIT
    tall = [c for c in configs if (c.kwargs["BLOCK_R"], c.num_warps) in wanted and c.kwargs["BLOCK_R"] >= frames]
    fits = [c for c in tall if c.kwargs["BLOCK_R"] * width <= checks.MAX_TEMPORAL_TILE]
    return fits or tall[:1]


_temporal_fwd_tuned = triton.autotune(
    configs=_CONFIGS, key=["FRAMES", "BLOCK_D", "DOT_PRECISION"], prune_configs_by={"early_config_prune": _prune}
)(_temporal_fwd_kernel)

# Small tiles under the interpreter: quick, and several tiles (with a ragged last one) even at tiny batches.
INTERPRETER_BLOCK_R = 16


# ---------------------------------------------------------------------------------------------------------------------
# 3. the launcher
# ---------------------------------------------------------------------------------------------------------------------
def temporal_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Temporal attention forward; ``q, k, v, out``: ``(B·N, heads, F, d)``, fp16/bf16/fp32, any strides.

    Args:
        scale: softmax scale, default ``d ** -0.5``.
        out: optional preallocated output (any strides); by default laid out like ``q``.
        config: fixed ``{"BLOCK_R"[, "num_warps"]}`` instead of autotuning (tests); ``BLOCK_R`` is raised to
            the next power of two ≥ F when smaller.

    Raises ``ValueError`` naming the first thing the kernel cannot take.
    """
    problem = checks.temporal_problem(q, k, v) or checks.device_problem(q)
    if problem:
        raise ValueError(f"temporal_attention (triton): {problem}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"expected out shaped {tuple(q.shape)} {q.dtype} on {q.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    batch, heads, frames, d = q.shape
    scale = d**-0.5 if scale is None else float(scale)
    args = (q, k, v, out, scale * LOG2E, *q.stride(), *k.stride(), *v.stride(), *out.stride(), heads, batch * heads)
    meta = {"FRAMES": frames, "HEAD_DIM": d, "BLOCK_D": checks.block_d(d), "DOT_PRECISION": dot_precision(q.dtype)}

    def grid(m: dict) -> tuple[int]:
        return (triton.cdiv(batch * heads, m["BLOCK_R"] // frames),)

    if config is None and not checks.interpreting():
        _temporal_fwd_tuned[grid](*args, **meta)
    else:
        config = dict(config or {"BLOCK_R": INTERPRETER_BLOCK_R})
        config["BLOCK_R"] = max(config["BLOCK_R"], checks.next_pow2(max(frames, 16)))
        _temporal_fwd_kernel[grid](*args, **meta, **config)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 4. autograd: Triton forward, backward by recomputation through SDPA
# ---------------------------------------------------------------------------------------------------------------------
class _TemporalAttention(torch.autograd.Function):
    """Saves only q, k, v; the backward re-runs SDPA and differentiates it (as for the sparse-causal kernel)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return temporal_attention_fwd(q, k, v, scale)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = (t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad))
        with torch.enable_grad():
            out = temporal_sdpa(q, k, v, ctx.scale)
        wanted = [t for t in (q, k, v) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return *(next(grads) if t.requires_grad else None for t in (q, k, v)), None


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Differentiable temporal attention (the registry's ``triton`` backend); shapes as the launcher."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _TemporalAttention.apply(q, k, v, scale)
    return temporal_attention_fwd(q, k, v, scale)
