"""Helpers shared by the kernel tests: devices, inputs in several memory layouts, error measure, tolerances."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKEND = "triton" if HAS_CUDA else "triton-interpret"  # the registry name that runs the kernels on DEVICE

requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _ships_ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


# compiling for an explicit GPU target (tests/kernels/aot_compile.py) needs no GPU, only the ptxas in Triton's wheel
requires_ptxas = pytest.mark.skipif(not _ships_ptxas(), reason="this Triton build ships no ptxas")

# ‖out − ref‖ / ‖ref‖. fp32: IEEE products on both sides, only the summation order differs.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
LAYOUTS = ("contiguous", "unet", "transposed")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in fp32; a NaN anywhere (an unwritten poisoned element) makes it NaN."""
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    """An output buffer with x's shape and strides, filled with NaN so any element the kernel skips shows."""
    return torch.full_like(x, float("nan"))


def make(shape: tuple[int, int, int, int], dtype: torch.dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    """A random ``(rows, heads, L, d)`` tensor on DEVICE in one of three memory layouts.

    ``contiguous``; ``unet``: the head-split view of a ``(rows, L, heads·d)`` projection, as the UNet passes it;
    ``transposed``: the last dim is not the contiguous one (stride_d = L), which no fast path may assume.
    """
    rows, heads, length, d = shape
    if layout == "contiguous":
        x = torch.randn(shape, generator=gen)
    elif layout == "unet":
        x = torch.randn(rows, length, heads, d, generator=gen).transpose(1, 2)
    elif layout == "transposed":
        x = torch.randn(rows, heads, d, length, generator=gen).transpose(2, 3)
    else:
        raise ValueError(layout)
    # .to() keeps the strides of a dense non-contiguous tensor
    return x.to(device=DEVICE, dtype=dtype)


@functools.cache
def bf16_dot_works() -> bool:
    """Triton ≤ 3.9's interpreter multiplies the bit patterns of bf16 ``tl.dot`` operands (triton-lang/triton#11584).

    Probed rather than assumed, so the bf16 cases start running once a fixed Triton is installed.
    """
    if HAS_CUDA:
        return True
    import triton
    import triton.language as tl

    @triton.jit
    def _dot(a_ptr, c_ptr, M: tl.constexpr):
        r = tl.arange(0, M)
        a = tl.load(a_ptr + r[:, None] * M + r[None, :])
        tl.store(c_ptr + r[:, None] * M + r[None, :], tl.dot(a, a))

    eye, out = torch.eye(16, dtype=torch.bfloat16), torch.zeros(16, 16)
    _dot[(1,)](eye, out, M=16)
    return bool(torch.equal(out, torch.eye(16)))


def skip_unless_runs(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not bf16_dot_works():
        pytest.skip(
            "Triton's CPU interpreter does not support bf16 tl.dot (triton-lang/triton#11584); GPU tests run bf16"
        )
