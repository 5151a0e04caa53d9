"""Ahead-of-time compilation of the sparse-causal kernel for a TensorRT plugin (``tensorrt.plugin``, ``aot_impl``).

TensorRT launches the plugin's PTX by itself, so the kernel must keep the calling convention and limits of
:mod:`.plugin_abi` (no scratch buffers, at most ``MAX_SHARED`` bytes of shared memory); the compile checks them for
the target architecture. Importing this module needs neither Triton nor a GPU; compiling needs Triton's compiler.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import checks
from .plugin_abi import DOT_PRECISION, MAX_SHARED, POINTER_ALIGNMENT, plugin_tile
from .reference import FrameOffsets, encode_offsets


@dataclass(frozen=True)
class PluginKernel:
    """One compiled plugin kernel: what TensorRT's ``aot_impl`` returns, plus what it was compiled with."""

    name: str  # the PTX entry
    ptx: str = field(repr=False)
    block_m: int  # queries per program, for plugin_grid
    num_warps: int  # the launch's block is num_warps · 32 threads
    shared: int  # dynamic shared memory bytes the launch must request
    block_n: int
    num_stages: int
    cubin: bytes = field(repr=False)  # the same kernel assembled for the target (for resource_usage)


def driver_ptx_version() -> int | None:
    """The newest PTX ISA version (× 10) the installed CUDA driver can compile, or ``None`` without a driver.

    TensorRT hands a plugin's PTX to the driver, so this — not the newest ISA Triton's bundled ptxas knows — is
    the version to emit on the machine that builds (and, usually, runs) the engine. Triton's own CUDA → PTX table
    (``ptx_get_version``) maps the driver's CUDA version.
    """
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    from triton.backends.nvidia.compiler import ptx_get_version

    return ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}")


def compile_sparse_causal_plugin(
    dtype: str,
    num_heads: int,
    head_dim: int,
    frame_offsets: FrameOffsets,
    scale: float | None,
    *,
    even_n: bool,
    arch: int | None = None,
    ptx_version: int | None = None,
) -> PluginKernel:
    """Compile ``_sparse_causal_plugin_kernel`` for one plugin configuration.

    Args:
        dtype: "fp16", "bf16" or "fp32" (inputs and output).
        num_heads, head_dim: the ``heads`` and ``d`` of the ``(B, F, heads, N, d)`` tensors.
        frame_offsets: as :func:`mindvideo.kernels.sparse_causal_attention` (``None`` = frame 0).
        scale: softmax scale, default ``head_dim ** -0.5``.
        even_n: every N the engine will see is a multiple of the tile's ``BLOCK_N`` (the key loop skips its masks);
            check with ``plugin_tile(dtype, head_dim)[1]``. False is always correct.
        arch: compute capability × 10 (90 = H100/H200) to compile for without a GPU; None = the current device.
        ptx_version: the PTX ISA version × 10 to emit (≥ 80 for sm_90). TensorRT hands the PTX to the CUDA driver,
            which compiles only ISA versions up to its own CUDA version; None = Triton's default, the newest its
            bundled ptxas knows (9.x with Triton 3.9, i.e. a CUDA 13 driver), so pin it to the deployment's driver.

    Raises ``ValueError`` for an argument the kernel cannot take or a result TensorRT cannot launch (more than
    :data:`MAX_SHARED` bytes of shared memory, or a scratch buffer), ``RuntimeError`` under Triton's interpreter.
    """
    block_m, block_n, num_warps, num_stages = plugin_tile(dtype, head_dim)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"expected num_heads ≥ 1, got {num_heads!r}")
    offsets = encode_offsets(frame_offsets)
    kernel = _compiler_kernel()

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .sparse_causal import LOG2E

    qk_scale = (head_dim**-0.5 if scale is None else float(scale)) * LOG2E

    constexprs = {
        "NUM_HEADS": num_heads,
        "HEAD_DIM": head_dim,
        "BLOCK_D": checks.block_d(head_dim),
        "OFFSETS": offsets,
        "QK_SCALE": qk_scale,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "EVEN_N": bool(even_n),
        "DOT_PRECISION": DOT_PRECISION[dtype],
    }
    pointers = ("Q", "K", "V", "Out")
    signature = {
        name: f"*{dtype}" if name in pointers else "i32" if name in ("num_frames", "N") else "constexpr"
        for name in kernel.arg_names
    }
    attrs = {(kernel.arg_names.index(p),): [["tt.divisibility", POINTER_ALIGNMENT]] for p in pointers}
    target = None if arch is None else GPUTarget("cuda", arch, 32)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options)

    meta = compiled.metadata
    where = f"sparse-causal plugin kernel ({dtype}, head dim {head_dim}, tile {block_m}×{block_n})"
    if meta.shared > MAX_SHARED:
        raise ValueError(f"{where} needs {meta.shared} bytes of shared memory; TensorRT launches with ≤ {MAX_SHARED}")
    if meta.global_scratch_size or meta.profile_scratch_size:
        raise ValueError(
            f"{where} needs scratch memory (global {meta.global_scratch_size} B, profile "
            f"{meta.profile_scratch_size} B), which a TensorRT plugin launch does not provide"
        )
    return PluginKernel(
        name=meta.name,
        ptx=compiled.asm["ptx"],
        block_m=block_m,
        num_warps=meta.num_warps,
        shared=meta.shared,
        block_n=block_n,
        num_stages=num_stages,
        cubin=compiled.asm["cubin"],
    )


def _compiler_kernel():
    """The plugin kernel as Triton's compiler sees it; refuses when Triton's interpreter replaced the compiler."""
    problem = "AOT compilation needs Triton's compiler; compile in a process without TRITON_INTERPRET"
    if checks.interpreting():
        raise RuntimeError(f"TRITON_INTERPRET is set: {problem}")
    import triton

    from .sparse_causal import _sparse_causal_plugin_kernel as kernel

    if not isinstance(kernel, triton.runtime.JITFunction):  # decorated while TRITON_INTERPRET was set
        raise RuntimeError(f"mindvideo.kernels.sparse_causal was imported under TRITON_INTERPRET: {problem}")
    return kernel


def resource_usage(cubin: bytes) -> str:
    """Registers, spill stack and static shared memory of a cubin, as ptxas reports them (``REG:… STACK:… …``).

    Uses the ``cuobjdump`` in Triton's wheel, so it runs without a GPU or a CUDA toolkit.
    """
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return next((line.strip() for line in out.splitlines() if "REG:" in line), "")
