"""The temporal Triton kernel against the torch reference (CPU interpreter without a GPU, small shapes)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BACKEND, DEVICE, TOLERANCE, make, poisoned_like, rel_err, requires_triton, skip_unless_runs

from mindvideo import kernels
from mindvideo.kernels.reference import temporal_reference

pytestmark = requires_triton

# (positions B·N, heads, frames F, d, layout). The interpreter tile is 16 rows: F = 5 packs 3 positions per tile and
# 7·2 = 14 (batch, head) pairs leave a ragged last tile; F = 17 and 64 need taller tiles, one position each.
CASES = [
    (7, 2, 1, 40, "contiguous"),
    (7, 2, 2, 64, "unet"),
    (7, 2, 3, 40, "transposed"),
    (7, 2, 5, 64, "unet"),
    (3, 2, 16, 40, "contiguous"),
    (3, 1, 17, 80, "unet"),
    (2, 1, 64, 64, "transposed"),
    (5, 3, 6, 160, "unet"),
    (9, 4, 3, 8, "unet"),  # the tiny UNet's head dim
]


@pytest.mark.parametrize(("pos", "heads", "f", "d", "layout"), CASES)
def test_matches_reference_fp32(pos, heads, f, d, layout, gen):
    from mindvideo.kernels.temporal import temporal_attention_fwd

    q, k, v = (make((pos, heads, f, d), torch.float32, layout, gen) for _ in range(3))
    out = poisoned_like(q)
    assert temporal_attention_fwd(q, k, v, out=out) is out
    err = rel_err(out, temporal_reference(q, k, v))
    assert err <= TOLERANCE[torch.float32], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_matches_reference_half(dtype, gen):
    skip_unless_runs(dtype)
    from mindvideo.kernels.temporal import temporal_attention_fwd

    q, k, v = (make((7, 2, 6, 40), dtype, "unet", gen) for _ in range(3))
    out = temporal_attention_fwd(q, k, v, out=poisoned_like(q))
    assert out.dtype == dtype
    err = rel_err(out, temporal_reference(q, k, v))
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e}"


def test_tile_height_is_configurable(gen):
    """Taller tiles pack more positions per program; every height gives the same answer."""
    from mindvideo.kernels.temporal import temporal_attention_fwd

    q, k, v = (make((11, 2, 3, 16), torch.float32, "unet", gen) for _ in range(3))
    ref = temporal_reference(q, k, v)
    for rows in (16, 32, 64):
        out = temporal_attention_fwd(q, k, v, out=poisoned_like(q), config={"BLOCK_R": rows})
        assert rel_err(out, ref) <= TOLERANCE[torch.float32], rows


def test_dispatch_scale_and_backward(gen):
    q, k, v = (make((5, 2, 4, 40), torch.float32, "unet", gen).requires_grad_() for _ in range(3))
    out = kernels.temporal_attention(q, k, v, 0.2, backend=BACKEND)
    assert out.stride() == q.stride()
    ref = temporal_reference(q, k, v, 0.2)
    assert rel_err(out, ref) <= TOLERANCE[torch.float32]
    grad = torch.randn(q.shape, generator=gen).to(DEVICE)
    got, want = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) <= 1e-5, f"d{name}: relative error {rel_err(g, w):.2e}"


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 2, 129, 16), "at most 128 frames"), ((4, 2, 65, 160), "at most 128 frames"), ((4, 2, 3, 257), "head dim")],
)
def test_bad_inputs_say_what_is_wrong(shape, message):
    from mindvideo.kernels.temporal import temporal_attention_fwd

    q = torch.zeros(shape, device=DEVICE)
    out = poisoned_like(q)
    with pytest.raises(ValueError, match="temporal_attention") as info:
        temporal_attention_fwd(q, q, q, out=out)
    assert message in str(info.value)
    assert out.isnan().all(), "a rejected call must not write"
