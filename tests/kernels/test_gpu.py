"""The full GPU correctness grid: SD-1.5 attention shapes, fp16/bf16/fp32, clamping, ragged N, strided inputs.

Runs only with CUDA (``pytest -m gpu tests/kernels``; ``benchmarks/triton_kernels.py`` runs it before timing).
Tolerance: ‖out − ref‖/‖ref‖ ≤ 1e-2 for bf16 and fp16 against the fp32-accumulating torch reference.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from kernel_cases import HAS_CUDA, TOLERANCE, make, poisoned_like, rel_err, requires_triton

from mindvideo import kernels
from mindvideo.kernels.reference import sparse_causal_reference, temporal_reference

pytestmark = [
    pytest.mark.gpu,
    requires_triton,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; the CPU interpreter tests cover small shapes"),
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GPU_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: TOLERANCE[torch.float32]}
OFFSETS = {"prev2": (-2, -1), "first+prev": (None, -1)}

# Every distinct (N, padded d, dtype) is one autotuning run and every (F, d, dtype) of the temporal kernel one more
# compile, so the grid is the product where it matters (16-bit) and a slice for fp32 (an inference side path).
# N: SD-1.5 at 256² (1024/256/64) and a ragged 77; d: SD-1.5 (40/80/160) and 64; F: clamping (1, 2) and a clip (6).
SPARSE_GRID = [
    (n, d, f, offsets, dtype)
    for n, d, f in itertools.product((1024, 256, 64, 77), (40, 80, 160, 64), (1, 2, 6))
    for offsets in OFFSETS
    for dtype in ("bf16", "fp16", "fp32")
    if dtype != "fp32" or (n == 77 and offsets == "prev2")
]
# The TensorRT plugin kernel with its fixed tiles (one per dtype and head width): 16-bit at SD-1.5's shapes.
PLUGIN_GRID = [
    (n, d, f, offsets, dtype)
    for n, d, f in itertools.product((1024, 256, 64, 77), (40, 80, 160, 64), (1, 2, 6))
    for offsets in OFFSETS
    for dtype in ("bf16", "fp16")
    if offsets == "prev2" or f == 6
]
TEMPORAL_GRID = [
    (f, d, dtype)
    for f, d in itertools.product((1, 2, 6, 16, 33, 60, 128), (40, 80, 160))
    for dtype in ("bf16", "fp16", "fp32")
    if (dtype != "fp32" or f in (6, 60)) and not (f > 64 and d > 128)  # 128 × 160 falls back to SDPA
]


@pytest.mark.parametrize(("n", "d", "f", "offsets", "dtype"), SPARSE_GRID)
def test_sparse_causal_grid(n, d, f, offsets, dtype, gen):
    dtype, offsets = DTYPES[dtype], OFFSETS[offsets]
    layout = "transposed" if (n + d + f) % 5 == 0 else "unet"  # a strided-d case every few
    q, k, v = (make((2 * f, 8, n, d), dtype, layout, gen) for _ in range(3))
    from mindvideo.kernels.sparse_causal import sparse_causal_attention_fwd

    out = sparse_causal_attention_fwd(q, k, v, f, offsets, out=poisoned_like(q))
    err = rel_err(out, sparse_causal_reference(q, k, v, f, offsets))
    assert err <= GPU_TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize(("n", "d", "f", "offsets", "dtype"), PLUGIN_GRID)
def test_plugin_kernel_grid(n, d, f, offsets, dtype, gen):
    dtype, offsets = DTYPES[dtype], OFFSETS[offsets]
    q, k, v = (torch.randn(2, f, 8, n, d, generator=gen).to("cuda", dtype) for _ in range(3))
    from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

    out = sparse_causal_plugin_attention(q, k, v, offsets, out=poisoned_like(q))
    ref = sparse_causal_reference(*(t.flatten(0, 1) for t in (q, k, v)), f, offsets).view(q.shape)
    err = rel_err(out, ref)
    assert err <= GPU_TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize(("f", "d", "dtype"), TEMPORAL_GRID)
def test_temporal_grid(f, d, dtype, gen):
    dtype = DTYPES[dtype]
    q, k, v = (make((2 * 256 + 3, 8, f, d), dtype, "unet", gen) for _ in range(3))
    from mindvideo.kernels.temporal import temporal_attention_fwd

    out = temporal_attention_fwd(q, k, v, out=poisoned_like(q))
    err = rel_err(out, temporal_reference(q, k, v))
    assert err <= GPU_TOLERANCE[dtype], f"relative error {err:.2e}"


def test_temporal_huge_batch(gen):
    """~10⁵ positions × 8 heads: the shape the kernel exists for (and int64 offsets past 2³¹ elements)."""
    q, k, v = (make((100_000, 8, 6, 40), torch.bfloat16, "unet", gen) for _ in range(3))
    from mindvideo.kernels.temporal import temporal_attention_fwd

    out = temporal_attention_fwd(q, k, v, out=poisoned_like(q))
    assert rel_err(out, temporal_reference(q, k, v)) <= 1e-2


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_backward_on_gpu(dtype, gen):
    dtype = DTYPES[dtype]
    q, k, v = (make((12, 8, 256, 80), dtype, "unet", gen).requires_grad_() for _ in range(3))
    grad = torch.randn(q.shape, generator=gen).to("cuda", dtype)
    out = kernels.sparse_causal_attention(q, k, v, 6, backend="triton")
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(sparse_causal_reference(q, k, v, 6), (q, k, v), grad)
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) <= 2e-2, f"d{name}: relative error {rel_err(g, w):.2e}"


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_video_unet_on_gpu(dtype, gen):
    """A small UNet with SD-1.5's head dims (40, 80): Triton attention vs the torch reference, same weights."""
    from mindvideo.models.unet import VideoUNet, VideoUNetConfig

    dtype = DTYPES[dtype]
    config = dataclasses.replace(VideoUNetConfig.tiny(), block_out_channels=(160, 320), attention_head_dim=4)
    torch.manual_seed(0)
    unet = VideoUNet(config).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    unet = unet.to("cuda", dtype)
    x = torch.randn(2, 4, 6, 16, 16, generator=gen).to("cuda", dtype)
    cond = torch.randn(2, 77, 32, generator=gen).to("cuda", dtype)
    t = torch.tensor([10.0, 500.0], device="cuda")
    with torch.no_grad():
        with kernels.use_backend("triton"):
            out = unet(x, t, cond)
        with kernels.use_backend("reference"):
            ref = unet(x, t, cond)
    assert rel_err(out, ref) <= GPU_TOLERANCE[dtype], f"relative error {rel_err(out, ref):.2e}"


def _cuda_driver():
    """cuda-python's driver API (``cuda.bindings.driver`` since 12.6, ``cuda.cuda`` before), or skip."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            pytest.skip('cuda-python is not installed (pip install -e ".[gpu]")')
    return driver


def _ok(driver, result):
    """cuda-python returns ``(CUresult, *values)``: check the code, return the value(s)."""
    status, *values = result
    assert status == driver.CUresult.CUDA_SUCCESS, status
    return values[0] if len(values) == 1 else values


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize(("n", "d"), [(1024, 40), (256, 80), (64, 160), (77, 40)])
def test_plugin_ptx_runs_as_tensorrt_launches_it(n, d, dtype, gen):
    """What the TensorRT plugin embeds — the PTX from ``aot.compile_sparse_causal_plugin`` for this driver's ISA —
    loaded with the CUDA driver and launched with TensorRT's argument list (q, k, v, F, N, out; Triton's two
    scratch pointers null), the grid from ``plugin_grid`` and the block/shared memory the plugin declares."""
    import ctypes

    from mindvideo.kernels import aot, plugin_abi

    driver = _cuda_driver()
    torch.zeros(1, device="cuda")  # torch's primary context is current: the module loads into it
    frames, offsets = 6, (-2, -1)
    tile_n = plugin_abi.plugin_tile(dtype, d)[1]
    kernel = aot.compile_sparse_causal_plugin(
        dtype, 8, d, offsets, None, even_n=n % tile_n == 0, ptx_version=aot.driver_ptx_version()
    )
    module = _ok(driver, driver.cuModuleLoadData(kernel.ptx.encode() + b"\0"))
    try:
        function = _ok(driver, driver.cuModuleGetFunction(module, kernel.name.encode()))
        q, k, v = (torch.randn(2, frames, 8, n, d, generator=gen).to("cuda", DTYPES[dtype]) for _ in range(3))
        out = poisoned_like(q)
        grid = plugin_abi.plugin_grid(tuple(q.shape), kernel.block_m, lambda a, b: -(-a // b))
        scalars = plugin_abi.plugin_scalars(tuple(q.shape))
        values = (q.data_ptr(), k.data_ptr(), v.data_ptr(), *scalars, out.data_ptr(), 0, 0)
        types = (ctypes.c_void_p,) * 3 + (ctypes.c_int,) * 2 + (ctypes.c_void_p,) * 3
        stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
        _ok(
            driver,
            driver.cuLaunchKernel(
                function, grid, 1, 1, kernel.num_warps * 32, 1, 1, kernel.shared, stream, (values, types), 0
            ),
        )
        torch.cuda.synchronize()
    finally:
        driver.cuModuleUnload(module)
    ref = sparse_causal_reference(*(t.flatten(0, 1) for t in (q, k, v)), frames, offsets).view(q.shape)
    err = rel_err(out, ref)
    assert err <= GPU_TOLERANCE[DTYPES[dtype]], f"relative error {err:.2e}"
