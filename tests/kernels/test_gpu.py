"""The full GPU correctness grid: SD-1.5 attention shapes, fp16/bf16/fp32, clamping, ragged N, strided inputs.

Runs only with CUDA (``pytest -m gpu tests/kernels``; ``benchmarks/kernels.py`` runs it before timing). Tolerance:
‖out − ref‖/‖ref‖ ≤ 1e-2 for bf16 and fp16 against the fp32-accumulating torch reference.
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
