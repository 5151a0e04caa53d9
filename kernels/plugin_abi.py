"""The sparse-causal kernel's calling convention as a TensorRT AOT plugin; imports neither Triton nor TensorRT.

Arguments: the ``Q, K, V`` pointers, the int32 :func:`plugin_scalars`, the output pointer; everything else is a
compile-time constant. Grid: 1-D, :func:`plugin_grid` programs of ``num_warps · 32`` threads. At most
:data:`MAX_SHARED` bytes of shared memory and no scratch buffers. Shared by :mod:`.aot` (compiles the kernel),
:mod:`.sparse_causal` (launches it from torch) and ``mindvideo.export.trt_plugin``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import checks

MAX_SHARED = 49152  # bytes of shared memory a kernel may use without cudaFuncSetAttribute, which TensorRT never calls
# TensorRT allocates its tensors 256-byte aligned. Telling the compiler the pointers are 16-byte aligned (as Triton's
# JIT specialises them at launch) lets it vectorise loads and pipeline K/V through shared memory asynchronously;
# without it the kernel loads synchronously (and the 128-row tile needs twice the registers)
POINTER_ALIGNMENT = 16
DOT_PRECISION = {"fp16": "tf32", "bf16": "tf32", "fp32": "ieee"}  # fp32: IEEE products, as the reference; 16-bit: n/a

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per (dtype, padded head dim; 16 and 32 use the 64 tiles). Compiled for
# sm_90 with Triton's ptxas, each fits 48 KiB of shared memory and spills nothing (STACK:0), with even and ragged N
# (``tests/kernels/aot_compile.py --plugin --all``). The 48 KiB bound the K/V pipeline, so wider heads get fewer
# rows, narrower key blocks or fewer stages: d ≤ 64 keeps the 128 × 64 tile with two stages (128 registers, two CTAs
# per SM); d = 80 one warpgroup on 64 rows; d = 160 (the UNet's deepest level, N ≤ 64 at 256²) 32 rows, which also
# doubles the programs of a small frame. fp32 multiplies on CUDA cores (IEEE, as the reference): small tiles; at
# exactly d = 256 (unmasked) ptxas spills a few bytes with every fp32 tile that fits, d ≤ 224 is spill-free.
PLUGIN_TILES: dict[tuple[str, int], tuple[int, int, int, int]] = {
    **{(dtype, 64): (128, 64, 8, 2) for dtype in ("fp16", "bf16")},
    **{(dtype, 128): (64, 32, 4, 2) for dtype in ("fp16", "bf16")},
    **{(dtype, 256): (32, 16, 8, 2) for dtype in ("fp16", "bf16")},
    ("fp32", 64): (32, 32, 8, 2),
    ("fp32", 128): (32, 16, 8, 2),
    ("fp32", 256): (16, 16, 2, 1),
}



def plugin_tile(dtype: str, head_dim: int) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for ``dtype`` ∈ {"fp16", "bf16", "fp32"} and ``head_dim``."""
    if dtype not in DOT_PRECISION:
        raise ValueError(f"expected dtype 'fp16', 'bf16' or 'fp32', got {dtype!r}")
    if not isinstance(head_dim, int) or not 1 <= head_dim <= checks.MAX_HEAD_DIM:
        raise ValueError(f"expected a head dim in 1…{checks.MAX_HEAD_DIM}, got {head_dim!r}")
    return PLUGIN_TILES[dtype, max(64, checks.block_d(head_dim))]


def plugin_grid(shape: tuple[Any, ...], block_m: int, cdiv: Callable[[Any, int], Any]) -> Any:
    """The number of programs for ``shape = (B, F, heads, N, d)``: ``cdiv(N, block_m) · B · F · heads``.

    The entries may be ints or TensorRT shape expressions; only ``*`` and ``cdiv`` (``tensorrt.plugin.cdiv`` there,
    an int function here) are applied, so the same expression serves both.
    """
    return cdiv(shape[3], block_m) * shape[0] * shape[1] * shape[2]


def plugin_scalars(shape: tuple[Any, ...]) -> tuple[Any, Any]:
    """The kernel's int32 arguments after the input pointers, in order: ``(F, N)`` of ``(B, F, heads, N, d)``."""
    return shape[1], shape[3]
