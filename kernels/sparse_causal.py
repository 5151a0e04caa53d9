"""Scene-dynamic sparse-causal attention as one Triton kernel (MinD-Video §3.3, after Tune-A-Video).

The queries of frame ``f`` attend over the keys/values of frames ``clamp(f + o, 0, F-1)`` for ``o`` in
``frame_offsets`` (``None`` = frame 0), concatenated along the key axis. The torch backends gather and concatenate
those frames' K and V first: two extra copies of K and V per layer per denoising step. This kernel reads the source
frames' K/V in place: one program owns ``BLOCK_M`` queries of one (frame, head), walks each source frame's keys in
``BLOCK_N`` blocks and keeps a running softmax (FlashAttention, Dao et al. 2022, Alg. 1), so the ``N × S·N`` score
matrix never reaches memory.

Layout (shared with :mod:`.reference`): ``q, k, v, out`` are ``(B·F, heads, N, d)``, frame-major inside each batch
item, any strides (the UNet passes head-split views of its projections).

A second kernel, ``_sparse_causal_plugin_kernel``, runs the same math (one ``_attend_frame``) in the calling
convention of a TensorRT ahead-of-time plugin: contiguous ``(B, F, heads, N, d)`` tensors, offsets and scale as
compile-time constants (compiled by :mod:`.aot`, launched from torch by :func:`sparse_causal_plugin_attention`).

File order: jit kernels → autotune list → launcher with checks (:func:`sparse_causal_attention_fwd`) → autograd
wrapper (:func:`sparse_causal_attention`) → the plugin kernel's launcher. Import this module only where Triton is
installed; the package imports it lazily.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import checks
from .plugin_abi import DOT_PRECISION, plugin_grid, plugin_scalars, plugin_tile
from .reference import FrameOffsets, encode_offsets, source_frames, sparse_causal_sdpa

LOG2E = 1.4426950408889634  # the kernel works in base 2: exp(x) = exp2(x·log2 e)


# ---------------------------------------------------------------------------------------------------------------------
# 1. the kernel
# ---------------------------------------------------------------------------------------------------------------------
@triton.jit
def _attend_frame(
    q, m_i, l_i, acc,  # this program's queries and its running softmax: max m_i, sum l_i, unnormalised acc
    k_ptrs, v_ptrs,  # (BLOCK_N, BLOCK_D) pointers to the first key block of one source frame
    stride_kn, stride_vn,
    bias,  # added to every score (log2 of the source frame's multiplicity; 0 when duplicates are attended again)
    qk_scale, N, offs_n, mask_d,
    BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over the N keys of one source frame, ``BLOCK_N`` at a time; returns the updated (m_i, l_i, acc).

    Both kernels call this (Triton inlines it), so the attention math exists once.
    """
    for start_n in range(0, N, BLOCK_N):
        if EVEN_N:  # every key block is full: only the padded head dims are masked
            kv_mask = mask_d[None, :]
        else:
            kv_mask = (start_n + offs_n < N)[:, None] & mask_d[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale + bias  # (BLOCK_M, BLOCK_N)
        if not EVEN_N:  # the last block of a frame is partial: its padding keys must get zero weight
            s = tl.where((start_n + offs_n < N)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return m_i, l_i, acc


@triton.heuristics({"EVEN_N": lambda args: args["N"] % args["BLOCK_N"] == 0})
@triton.jit
def _sparse_causal_fwd_kernel(
    Q, K, V, Out,
    Src, SrcBias, SrcCount,  # per query frame: distinct source frames, log2(multiplicity), how many
    qk_scale,  # softmax scale · log2(e)
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    num_heads, num_frames, N,
    MAX_SRC: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # 1. which queries: a 1-D grid (no 65535 limit on the batch axis); the query blocks of one (frame, head) are
    #    neighbours, so they run together and share the source frames' K/V through L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    bf = pid_bh // num_heads  # row of the (B·F) axis
    head = pid_bh % num_heads
    frame = bf % num_frames
    clip = bf - frame  # row of this clip's frame 0

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM  # head dims 40/80/160 are padded to 64/128/256 in registers, never in memory
    q_ptrs = Q + bf.to(tl.int64) * stride_qb + head * stride_qh
    q_ptrs += offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < N) & mask_d[None, :], other=0.0)

    # 2. online softmax over every key of every source frame: running max m_i, running sum l_i, unnormalised acc
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for i in range(tl.load(SrcCount + frame)):
        src = tl.load(Src + frame * MAX_SRC + i)
        # clamping makes early frames list one source twice; attending it once with its scores raised by
        # log2(multiplicity) gives the same softmax and skips the duplicate reads
        bias = tl.load(SrcBias + frame * MAX_SRC + i)
        kv_row = (clip + src).to(tl.int64)
        k_ptrs = K + kv_row * stride_kb + head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = V + kv_row * stride_vb + head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        m_i, l_i, acc = _attend_frame(
            q, m_i, l_i, acc, k_ptrs, v_ptrs, stride_kn, stride_vn, bias, qk_scale, N, offs_n, mask_d,
            BLOCK_N, EVEN_N, DOT_PRECISION,
        )  # fmt: skip

    # 3. normalise once at the end and store in the output's dtype
    acc = acc / l_i[:, None]
    o_ptrs = Out + bf.to(tl.int64) * stride_ob + head * stride_oh
    o_ptrs += offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=(offs_m[:, None] < N) & mask_d[None, :])


@triton.jit
def _sparse_causal_plugin_kernel(
    Q, K, V,  # inputs, contiguous (B, F, heads, N, d)
    num_frames, N,  # int32 scalars (TensorRT shape expressions: F and N)
    Out,  # output, contiguous like Q
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    OFFSETS: tl.constexpr,  # tuple of ints, FIRST_FRAME for "frame 0" (reference.encode_offsets)
    QK_SCALE: tl.constexpr,  # softmax scale · log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """The same attention in TensorRT's calling convention for ahead-of-time plugins (see :mod:`.aot`).

    TensorRT passes (inputs, int32 extra args, outputs) and nothing else: no strides (its tensors are dense, so they
    follow from NUM_HEADS, HEAD_DIM and N), no source table (the plugin's attributes are compile-time constants, so
    the offsets are a constexpr tuple and the source frames are computed here). Same 1-D grid and program order as
    ``_sparse_causal_fwd_kernel``: ``cdiv(N, BLOCK_M) · B·F·heads`` programs.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    pid_m = pid % num_m
    pid_bh = pid // num_m  # row of the (B·F·heads) axis: bf · NUM_HEADS + head
    bf = pid_bh // NUM_HEADS
    head = pid_bh % NUM_HEADS
    frame = bf % num_frames
    clip = bf - frame

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    tile_m = offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # a (BLOCK_M, BLOCK_D) tile inside one (N, d) matrix
    tile_n = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    row = pid_bh.to(tl.int64) * N * HEAD_DIM  # where this (frame, head)'s (N, d) matrix starts
    q = tl.load(Q + row + tile_m, mask=(offs_m[:, None] < N) & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for i in range(len(OFFSETS)):  # a loop, not unrolled: one copy of the key loop, whatever the number of offsets
        offset = 0
        for j in tl.static_range(len(OFFSETS)):  # OFFSETS[i] for a runtime i
            offset = tl.where(i == j, OFFSETS[j], offset)
        # no dedup table: a source listed twice after clamping (early frames) is attended twice, which is exactly
        # the reference's concatenation of K/V frames (the other kernel folds duplicates into a log2 bias instead)
        src = tl.minimum(tl.maximum(frame + offset, 0), num_frames - 1)
        kv_row = ((clip + src) * NUM_HEADS + head).to(tl.int64) * N * HEAD_DIM
        m_i, l_i, acc = _attend_frame(
            q, m_i, l_i, acc, K + kv_row + tile_n, V + kv_row + tile_n, HEAD_DIM, HEAD_DIM, 0.0, QK_SCALE, N,
            offs_n, mask_d, BLOCK_N, EVEN_N, DOT_PRECISION,
        )  # fmt: skip

    acc = acc / l_i[:, None]
    tl.store(Out + row + tile_m, acc.to(Out.dtype.element_ty), mask=(offs_m[:, None] < N) & mask_d[None, :])


# ---------------------------------------------------------------------------------------------------------------------
# 2. autotuning: a handful of tiles, pruned by what fits
# ---------------------------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per padded head dim. Each tile was compiled ahead of time for sm_90
# (ptxas via Triton) and uses no spill stack for 16-bit inputs; wider heads need more warps to hold the fp32
# accumulator. fp32 inputs multiply on CUDA cores (IEEE products, as the reference): only small tiles avoid
# spilling, and the registry sends fp32 on CUDA to SDPA — the fp32 tiles serve direct calls and tests.
_TILES_16BIT = {
    64: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
    128: [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3)],
    256: [(64, 32, 8, 3), (64, 32, 8, 2)],
}
_TILES_FP32 = [(32, 32, 4, 2), (16, 32, 4, 2)]
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in dict.fromkeys([t for ts in _TILES_16BIT.values() for t in ts] + _TILES_FP32)
]


def _tile(c: triton.Config) -> tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The tiles listed for this head width and dtype, minus those much taller or wider than one frame."""
    width, rows = (named_args.get(name, kwargs.get(name)) for name in ("BLOCK_D", "N"))
    if "Q" in named_args and named_args["Q"].element_size() == 4:
        wanted = _TILES_FP32 if width <= 64 else _TILES_FP32[1:]
    else:
        wanted = _TILES_16BIT[max(64, width)]
    listed = [c for c in configs if _tile(c) in wanted]
    limit = max(64, checks.next_pow2(rows))  # the smallest 16-bit tiles are 64 tall
    short = [c for c in listed if c.kwargs["BLOCK_M"] <= limit and c.kwargs["BLOCK_N"] <= limit]
    return short or listed


_sparse_causal_fwd_tuned = triton.autotune(
    configs=_CONFIGS, key=["N", "BLOCK_D", "DOT_PRECISION"], prune_configs_by={"early_config_prune": _prune}
)(_sparse_causal_fwd_kernel)

# The interpreter runs every program in Python: small fixed tiles keep the CPU tests quick and make
# "N not a multiple of the block" easy to hit.
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}


# ---------------------------------------------------------------------------------------------------------------------
# 3. the launcher
# ---------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def source_table(
    num_frames: int, frame_offsets: tuple[int | None, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's view of ``frame_offsets``: for every query frame its distinct source frames.

    Returns ``src`` int32 ``(F, S)`` (distinct sources first, then padding), ``bias`` float32 ``(F, S)`` =
    log2(how often the offsets list that source) and ``count`` int32 ``(F,)``; ``S = len(frame_offsets)``.
    Cached per device so a steady-state call copies nothing to the GPU (and stays CUDA-graph capturable).
    """
    per_offset = source_frames(num_frames, frame_offsets).T.tolist()  # F lists of S source frames
    width = len(frame_offsets)
    src, bias, count = [], [], []
    for sources in per_offset:
        distinct = sorted(set(sources), key=sources.index)
        src.append(distinct + [0] * (width - len(distinct)))
        bias.append([math.log2(sources.count(s)) for s in distinct] + [0.0] * (width - len(distinct)))
        count.append(len(distinct))
    return (
        torch.tensor(src, dtype=torch.int32, device=device),
        torch.tensor(bias, dtype=torch.float32, device=device),
        torch.tensor(count, dtype=torch.int32, device=device),
    )


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: fp32 inputs follow torch's own matmul setting (IEEE unless TF32 was allowed,
    e.g. by ``torch.set_float32_matmul_precision("high")``); 16-bit inputs keep Triton's default, which they ignore."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


def sparse_causal_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Sparse-causal attention forward; ``q, k, v, out``: ``(B·F, heads, N, d)``, fp16/bf16/fp32, any strides.

    Args:
        num_frames: F, the frames per batch item (the leading dim is B·F, frame-major).
        frame_offsets: frame f attends over frames ``clamp(f + o, 0, F-1)``; ``None`` means frame 0.
        scale: softmax scale, default ``d ** -0.5``.
        out: optional preallocated output (any strides); by default laid out like ``q``, so the UNet's
            ``merge_heads`` stays a view.
        config: fixed ``{"BLOCK_M", "BLOCK_N"[, "num_warps", "num_stages"]}`` instead of autotuning (tests).

    Raises ``ValueError`` naming the first thing the kernel cannot take.
    """
    frame_offsets = tuple(frame_offsets)
    problem = checks.sparse_causal_problem(q, k, v, num_frames, frame_offsets) or checks.device_problem(q)
    if problem:
        raise ValueError(f"sparse_causal_attention (triton): {problem}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"expected out shaped {tuple(q.shape)} {q.dtype} on {q.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    bf, heads, n, d = q.shape
    src, bias, count = source_table(num_frames, frame_offsets, q.device)
    scale = d**-0.5 if scale is None else float(scale)
    strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride())
    args = (q, k, v, out, src, bias, count, scale * LOG2E, *strides, heads, num_frames, n)
    meta = {
        "MAX_SRC": src.shape[1],
        "HEAD_DIM": d,
        "BLOCK_D": checks.block_d(d),
        "DOT_PRECISION": dot_precision(q.dtype),
    }

    def grid(m: dict) -> tuple[int]:
        return (triton.cdiv(n, m["BLOCK_M"]) * bf * heads,)

    if config is None and not checks.interpreting():
        _sparse_causal_fwd_tuned[grid](*args, **meta)
    else:
        _sparse_causal_fwd_kernel[grid](*args, **meta, **(config or INTERPRETER_CONFIG))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 4. autograd: Triton forward, backward by recomputation through gather/concat + SDPA
# ---------------------------------------------------------------------------------------------------------------------
class _SparseCausalAttention(torch.autograd.Function):
    """Saves only q, k, v (no attention matrix); the backward re-runs the torch path and differentiates it.

    Why not a Triton backward: dK/dV of one source frame collect contributions from every query frame that lists
    it (up to ``len(offsets) + 1`` frames after clamping), which needs atomics or an inverse frame map, and the
    speed of such a kernel cannot be checked without a GPU; SDPA's backward is already a fused kernel. The
    forward — the part inference runs 2·S times per clip — is where skipping the copies pays.
    """

    @staticmethod
    def forward(ctx, q, k, v, num_frames, frame_offsets, scale):
        ctx.save_for_backward(q, k, v)
        ctx.args = (num_frames, frame_offsets, scale)
        return sparse_causal_attention_fwd(q, k, v, num_frames, frame_offsets, scale)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = (t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad))
        with torch.enable_grad():
            out = sparse_causal_sdpa(q, k, v, *ctx.args)
        wanted = [t for t in (q, k, v) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return *(next(grads) if t.requires_grad else None for t in (q, k, v)), None, None, None


def sparse_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_frames: int,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
) -> torch.Tensor:
    """Differentiable sparse-causal attention (the registry's ``triton`` backend); shapes as the launcher."""
    frame_offsets = tuple(frame_offsets)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _SparseCausalAttention.apply(q, k, v, num_frames, frame_offsets, scale)
    return sparse_causal_attention_fwd(q, k, v, num_frames, frame_offsets, scale)


# ---------------------------------------------------------------------------------------------------------------------
# 5. the TensorRT plugin's calling convention, launched from torch
# ---------------------------------------------------------------------------------------------------------------------
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _plugin_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_offsets: FrameOffsets) -> str | None:
    """Why the plugin kernel cannot take these inputs (TensorRT's dense 5-D tensors), or ``None`` if it can."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 5 or not t.is_contiguous():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            return f"expected contiguous {name} shaped (B, F, heads, N, d), got {shape}"
    if not q.shape == k.shape == v.shape:  # checked before flattening: (B, F) = (2, 3) and (3, 2) flatten alike
        shapes = ", ".join(str(tuple(t.shape)) for t in (q, k, v))
        return f"expected q, k, v of one shape (B, F, heads, N, d), got {shapes}"
    flat = (t.flatten(0, 1) for t in (q, k, v))  # (B·F, heads, N, d), the layout the checks describe
    problem = checks.sparse_causal_problem(*flat, q.shape[1], tuple(frame_offsets)) or checks.device_problem(q)
    if problem is None:
        try:
            encode_offsets(frame_offsets)
        except ValueError as error:
            problem = str(error)
    return problem


def sparse_causal_plugin_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frame_offsets: FrameOffsets = (-2, -1),
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Launch ``_sparse_causal_plugin_kernel`` exactly as the TensorRT plugin does; ``q, k, v, out``: contiguous
    ``(B, F, heads, N, d)``, fp16/bf16/fp32.

    Same argument order, constexprs, grid, int32 scalars, tile and dot precision (:mod:`.plugin_abi`) as
    :func:`.aot.compile_sparse_causal_plugin`, so the CPU interpreter tests check the calling convention TensorRT
    uses. ``out``: the output buffer (TensorRT passes its own), by default a new one. ``config``: fixed
    ``{"BLOCK_M", "BLOCK_N"[, "num_warps", "num_stages"]}`` instead of the plugin's tile (the interpreter uses small
    tiles by default).

    Raises ``ValueError`` naming the first thing the kernel cannot take.
    """
    problem = _plugin_problem(q, k, v, frame_offsets)
    if problem:
        raise ValueError(f"sparse_causal_plugin_attention (triton): {problem}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or not out.is_contiguous():
        raise ValueError(
            f"expected a contiguous out shaped {tuple(q.shape)} {q.dtype} on {q.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    offsets = encode_offsets(frame_offsets)

    _, _, heads, n, d = q.shape
    if config is None:
        if checks.interpreting():
            config = INTERPRETER_CONFIG
        else:
            block_m, block_n, num_warps, num_stages = plugin_tile(_DTYPE_NAMES[q.dtype], d)
            config = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}
    scale = d**-0.5 if scale is None else float(scale)
    grid = (plugin_grid(tuple(q.shape), config["BLOCK_M"], triton.cdiv),)
    _sparse_causal_plugin_kernel[grid](
        q, k, v, *plugin_scalars(tuple(q.shape)), out,
        NUM_HEADS=heads, HEAD_DIM=d, BLOCK_D=checks.block_d(d), OFFSETS=offsets, QK_SCALE=scale * LOG2E,
        EVEN_N=n % config["BLOCK_N"] == 0, DOT_PRECISION=DOT_PRECISION[_DTYPE_NAMES[q.dtype]], **config,
    )  # fmt: skip
    return out
