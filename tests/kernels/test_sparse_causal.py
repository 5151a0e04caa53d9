"""The sparse-causal Triton kernel against the torch reference (CPU interpreter without a GPU, small shapes)."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_cases import (
    BACKEND,
    DEVICE,
    TOLERANCE,
    make,
    poisoned_like,
    rel_err,
    requires_triton,
    skip_unless_runs,
)

from mindvideo import kernels
from mindvideo.kernels.reference import sparse_causal_reference

pytestmark = requires_triton

# (clips B, frames F, heads, N, d, offsets, layout). The interpreter tiles are 16 × 16: N = 37 leaves a partial
# block of queries and of keys, N = 32 takes the even path. F = 1, 2, 3 exercise the clamping at the first frames.
CASES = [
    (2, 1, 2, 37, 40, (-2, -1), "contiguous"),
    (2, 2, 2, 37, 64, (-2, -1), "unet"),
    (1, 3, 2, 37, 40, (-2, -1), "transposed"),
    (1, 3, 2, 32, 64, (None, -1), "contiguous"),  # Tune-A-Video: first frame + previous frame
    (2, 2, 1, 21, 40, (None, -1), "unet"),
    (1, 1, 2, 19, 64, (None, -1), "transposed"),
    (1, 3, 1, 37, 40, (-3, -2, -1), "unet"),  # frame 2 lists frame 0 twice, frame 1 once: unequal multiplicities
    (1, 3, 2, 20, 80, (-1, 1), "contiguous"),  # a future frame; d = 80 pads to 128 in registers
    (1, 2, 1, 17, 160, (-2, -1), "unet"),  # d = 160 pads to 256
    (1, 4, 2, 24, 8, (0,), "contiguous"),  # per-frame self-attention; d = 8 pads to 16 (the tiny UNet's heads)
]


def _inputs(b, f, heads, n, d, layout, dtype, gen):
    return [make((b * f, heads, n, d), dtype, layout, gen) for _ in range(3)]


@pytest.mark.parametrize(("b", "f", "heads", "n", "d", "offsets", "layout"), CASES)
def test_matches_reference_fp32(b, f, heads, n, d, offsets, layout, gen):
    from mindvideo.kernels.sparse_causal import sparse_causal_attention_fwd

    q, k, v = _inputs(b, f, heads, n, d, layout, torch.float32, gen)
    out = poisoned_like(q)
    returned = sparse_causal_attention_fwd(q, k, v, f, offsets, out=out)
    assert returned is out
    err = rel_err(out, sparse_causal_reference(q, k, v, f, offsets))
    assert err <= TOLERANCE[torch.float32], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("offsets", [(-2, -1), (None, -1)], ids=["prev2", "first+prev"])
def test_matches_reference_half(dtype, offsets, gen):
    skip_unless_runs(dtype)
    from mindvideo.kernels.sparse_causal import sparse_causal_attention_fwd

    q, k, v = _inputs(1, 3, 2, 37, 40, "unet", dtype, gen)
    out = sparse_causal_attention_fwd(q, k, v, 3, offsets, out=poisoned_like(q))
    assert out.dtype == dtype
    err = rel_err(out, sparse_causal_reference(q, k, v, 3, offsets))
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e}"


def test_dispatch_and_scale(gen):
    """Through the public dispatcher, with a non-default scale; output laid out like q (merge_heads stays a view)."""
    q, k, v = _inputs(1, 3, 2, 21, 40, "unet", torch.float32, gen)
    out = kernels.sparse_causal_attention(q, k, v, 3, (-2, -1), 0.3, backend=BACKEND)
    assert out.stride() == q.stride()
    assert rel_err(out, sparse_causal_reference(q, k, v, 3, (-2, -1), 0.3)) <= TOLERANCE[torch.float32]


def test_backward_matches_reference(gen):
    """The autograd wrapper: Triton forward, gradients from the recomputed torch path."""
    q, k, v = (t.requires_grad_() for t in _inputs(1, 3, 1, 19, 40, "contiguous", torch.float32, gen))
    grad = torch.randn(q.shape, generator=gen).to(DEVICE)
    out = kernels.sparse_causal_attention(q, k, v, 3, (None, -1), backend=BACKEND)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(sparse_causal_reference(q, k, v, 3, (None, -1)), (q, k, v), grad)
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) <= 1e-5, f"d{name}: relative error {rel_err(g, w):.2e}"
    # only some inputs needing grad
    out = kernels.sparse_causal_attention(q.detach(), k, v.detach(), 3, backend=BACKEND)
    (dk,) = torch.autograd.grad(out, (k,), grad)
    assert dk.shape == k.shape


def test_source_table_folds_duplicates():
    from mindvideo.kernels.sparse_causal import source_table

    src, bias, count = source_table(3, (-3, -2, -1), torch.device("cpu"))
    # frame 0: (0, 0, 0); frame 1: (0, 0, 0); frame 2: (0, 0, 1)
    assert count.tolist() == [1, 1, 2]
    assert src[2, :2].tolist() == [0, 1]
    assert bias[0, 0].item() == pytest.approx(math.log2(3))
    assert bias[2, :2].tolist() == pytest.approx([1.0, 0.0])


BAD = [
    (lambda q: (q[0], q, q, 2, (-1,)), "expected q shaped (B·F, heads, N, d)"),
    (lambda q: (q, q[:, :1], q, 2, (-1,)), "of one shape"),
    (lambda q: (q, q, q.double(), 2, (-1,)), "float16, bfloat16 or float32"),
    (lambda q: (q.int(), q.int(), q.int(), 2, (-1,)), "float16, bfloat16 or float32"),
    (lambda q: (q, q, q, 3, (-1,)), "num_frames ≥ 1 dividing the leading dim B·F = 4"),
    (lambda q: (q, q, q, 2, ()), "frame_offsets"),
    (lambda q: (q, q, q, 2, ("first", -1)), "frame_offsets"),
    (lambda q: (*[q.new_zeros(4, 1, 3, 300)] * 3, 2, (-1,)), "head dim in 1…256"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_inputs_say_what_is_wrong(args, message):
    from mindvideo.kernels.sparse_causal import sparse_causal_attention_fwd

    q = torch.zeros(4, 2, 5, 8, device=DEVICE)
    out = poisoned_like(q)
    with pytest.raises(ValueError, match="sparse_causal_attention") as info:
        sparse_causal_attention_fwd(*args(q), out=out)
    assert message in str(info.value)
    assert out.isnan().all(), "a rejected call must not write"


def test_bad_out_and_device(monkeypatch):
    from mindvideo.kernels.sparse_causal import sparse_causal_attention_fwd

    q = torch.zeros(4, 2, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"expected out shaped \(4, 2, 5, 8\)"):
        sparse_causal_attention_fwd(q, q, q, 2, out=torch.empty(4, 2, 5, 9, device=DEVICE))
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="expected CUDA tensors"):
            sparse_causal_attention_fwd(q, q, q, 2)


def test_autotune_pruning_keeps_listed_tiles():
    """The GPU autotuner cannot run here; its pruning is plain Python and can."""
    from mindvideo.kernels import sparse_causal, temporal

    def tiles(prune, configs, named, **meta):
        return [(*c.kwargs.values(), c.num_warps) for c in prune(configs, named, **meta)]

    bf16, fp32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    wide = tiles(sparse_causal._prune, sparse_causal._CONFIGS, {"N": 1024, "Q": bf16}, BLOCK_D=256)
    assert wide and all(w == 8 for *_, w in wide)  # d = 160: eight warps hold the 256-wide accumulator
    assert (128, 128, 8) in tiles(sparse_causal._prune, sparse_causal._CONFIGS, {"N": 1024, "Q": bf16}, BLOCK_D=64)
    assert (128, 128, 8) in tiles(sparse_causal._prune, sparse_causal._CONFIGS, {"N": 1024, "Q": bf16}, BLOCK_D=16)
    small = tiles(sparse_causal._prune, sparse_causal._CONFIGS, {"N": 1024, "Q": fp32}, BLOCK_D=128)
    assert small == [(16, 32, 4)]
    short = tiles(sparse_causal._prune, sparse_causal._CONFIGS, {"N": 20, "Q": bf16}, BLOCK_D=64)
    assert short and all(bm <= 64 and bn <= 64 for bm, bn, _ in short)  # no 128-row tiles for a 20-token frame

    assert all(r >= 60 for r, _ in tiles(temporal._prune, temporal._CONFIGS, {"Q": bf16}, FRAMES=60, BLOCK_D=64))
    assert tiles(temporal._prune, temporal._CONFIGS, {"Q": bf16}, FRAMES=128, BLOCK_D=128) == [(128, 8)]
    assert sorted(tiles(temporal._prune, temporal._CONFIGS, {"Q": bf16}, FRAMES=6, BLOCK_D=64)) == [
        (16, 1),
        (32, 2),
        (64, 4),
        (128, 8),
    ]
    assert (16, 4) in tiles(temporal._prune, temporal._CONFIGS, {"Q": fp32}, FRAMES=6, BLOCK_D=64)
