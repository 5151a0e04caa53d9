"""The ``sdpa`` temporal backend on the CPU: short sequences run as the reference's plain products."""

from __future__ import annotations

import torch

from mindvideo import kernels
from mindvideo.kernels import reference


def _qkv(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(3)]


def test_short_sequences_run_the_reference_products():
    q, k, v = _qkv((64, 4, 60, 8))  # the demo UNet's level-0 temporal attention at 60 frames: 921,600 scores
    out = kernels.temporal_attention(q, k, v, backend="sdpa")
    assert torch.equal(out, reference.temporal_reference(q, k, v))  # the same products, bit for bit


def test_long_sequences_keep_the_sdpa_kernel(monkeypatch):
    monkeypatch.setattr(reference, "_CPU_MATMUL_SCORES", 1000)  # 8·2·30·30 = 14,400 scores: above it
    q, k, v = _qkv((8, 2, 30, 16), seed=1)
    out = kernels.temporal_attention(q, k, v, 0.3, backend="sdpa")
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert torch.equal(out, want)
    assert torch.allclose(out, reference.temporal_reference(q, k, v, 0.3), rtol=1e-5, atol=1e-6)
