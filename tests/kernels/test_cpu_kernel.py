"""The ``cpu`` attention backends: the fused C kernels (kernels/csrc/attention_cpu.c) as torch ops."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mindvideo import kernels
from mindvideo.kernels import cpu, reference

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the C attention extension was not built")


def _qkv(shape, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * scale for _ in range(3)]


@pytest.mark.parametrize("frames", [1, 2, 15, 16, 17, 60, 130])
@pytest.mark.parametrize("dim", [1, 3, 8, 16, 40])
def test_matches_the_reference(frames, dim):
    q, k, v = _qkv((5, 3, frames, dim), seed=frames * 100 + dim)
    out = kernels.temporal_attention(q, k, v, backend="cpu")
    want = reference.temporal_reference(q, k, v)
    assert out.shape == want.shape and out.is_contiguous()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-6)


def test_one_frame_returns_its_value():
    q, k, v = _qkv((4, 2, 1, 8))
    assert torch.allclose(kernels.temporal_attention(q, k, v, backend="cpu"), v, rtol=1e-6, atol=0)


def test_explicit_scale_and_large_logits_stay_finite():
    q, k, v = _qkv((6, 2, 60, 8), seed=3, scale=30.0)  # logits up to ~1e4: every row is one-hot after the softmax
    out = kernels.temporal_attention(q, k, v, 0.7, backend="cpu")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.temporal_reference(q, k, v, 0.7), rtol=1e-5, atol=2e-4)


def test_strided_inputs_are_read_in_place():
    # (B, N, h, F, d) permuted from frame-major token rows, as the UNet's temporal layer makes them
    rows = torch.randn(2, 60, 16, 4, 8)  # (B, F, N, h, d)
    q = rows.permute(0, 2, 3, 1, 4)[0]  # (N, h, F, d) of the first clip: a non-contiguous view
    k, v = (rows.flip(1).permute(0, 2, 3, 1, 4)[0] + x for x in (0.1, -0.2))
    assert not q.is_contiguous()
    out = kernels.temporal_attention(q, k, v, backend="cpu")
    torch.testing.assert_close(out, reference.temporal_reference(q.contiguous(), k, v), rtol=1e-5, atol=2e-6)


def test_expanded_inputs_with_stride_zero():
    q, k, v = _qkv((1, 2, 30, 8), seed=7)
    k = k.expand(6, 2, 30, 8)  # one key set shared by every block
    q, v = q.expand(6, 2, 30, 8) + torch.arange(6.0).view(6, 1, 1, 1), v.expand(6, 2, 30, 8)
    assert k.stride(0) == 0 and v.stride(0) == 0
    out = kernels.temporal_attention(q, k, v, backend="cpu")
    torch.testing.assert_close(
        out, reference.temporal_reference(q, k.contiguous(), v.contiguous()), rtol=1e-5, atol=2e-6
    )


def test_inference_mode_tensors():
    q, k, v = _qkv((8, 4, 60, 8), seed=8)
    with torch.inference_mode():
        assert kernels.select("temporal_attention", q, k, v).name == "cpu"
        out = kernels.sparse_causal_attention(q, k, v, 4)
    torch.testing.assert_close(out, reference.sparse_causal_reference(q, k, v, 4), rtol=1e-5, atol=2e-6)


def test_result_does_not_depend_on_the_thread_count():
    q, k, v = _qkv((64, 4, 60, 8), seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.temporal_attention(q, k, v, backend="cpu")
        torch.set_num_threads(2)
        two = kernels.temporal_attention(q, k, v, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_chosen_only_for_inference_in_fp32_on_the_cpu():
    q, k, v = _qkv((8, 4, 60, 8))
    assert kernels.select("temporal_attention", q, k, v).name == "cpu"
    assert kernels.select("temporal_attention", *(t.double() for t in (q, k, v))).name != "cpu"
    assert kernels.select("temporal_attention", *(t.bfloat16() for t in (q, k, v))).name != "cpu"
    assert kernels.select("temporal_attention", q, k[:, :, :30], v[:, :, :30]).name != "cpu"
    assert kernels.select("temporal_attention", *_qkv((2, 1, 257, 4))).name != "cpu"  # 257² > MAX_BLOCK_SCORES
    needs_grad = q.clone().requires_grad_()
    assert kernels.select("temporal_attention", needs_grad, k, v).name != "cpu"  # training: autograd-capable ones
    with torch.no_grad():
        assert kernels.select("temporal_attention", needs_grad, k, v).name == "cpu"
        out = kernels.temporal_attention(needs_grad, k, v)
    torch.testing.assert_close(out, reference.temporal_reference(q, k, v), rtol=1e-5, atol=2e-6)


def test_declines_everything_without_the_extension(monkeypatch):
    monkeypatch.setattr(cpu, "_attention_cpu", None)
    q, k, v = _qkv((8, 4, 60, 8))
    assert not cpu.temporal_supports(q, k, v) and not cpu.sparse_causal_supports(q, k, v, 4)
    assert kernels.select("temporal_attention", q, k, v).name == "sdpa"
    assert kernels.select("sparse_causal_attention", q, k, v, 4).name == "sdpa"


# --- sparse-causal attention ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frames, offsets", [(1, (-2, -1)), (6, (-2, -1)), (5, (None, -1)), (7, (0,)), (4, (-3, -2, -1, 0, 1, 2, 3, 4))]
)
@pytest.mark.parametrize("tokens, dim", [(1, 8), (16, 16), (17, 3), (64, 8), (40, 40)])
def test_sparse_causal_matches_the_reference(frames, offsets, tokens, dim):
    q, k, v = _qkv((2 * frames, 3, tokens, dim), seed=tokens * 10 + dim)  # two clips
    out = kernels.sparse_causal_attention(q, k, v, frames, offsets, backend="cpu")
    want = reference.sparse_causal_reference(q, k, v, frames, offsets)
    assert out.is_contiguous()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-6)


def test_sparse_causal_reads_strided_heads_in_place():
    rows = torch.randn(3, 12, 16, 4, 8).unbind(0)  # q, k, v as (B·F, N, heads, d) token rows of 2 clips × 6 frames
    q, k, v = (t.transpose(1, 2) for t in rows)  # (B·F, heads, N, d) views, as the UNet's split_heads makes them
    out = kernels.sparse_causal_attention(q, k, v, 6, (-2, -1), 0.5, backend="cpu")
    want = reference.sparse_causal_reference(q.contiguous(), k.contiguous(), v.contiguous(), 6, (-2, -1), 0.5)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-6)


def test_sparse_causal_chosen_only_where_it_fits():
    q, k, v = _qkv((12, 4, 64, 8))
    assert kernels.select("sparse_causal_attention", q, k, v, 6, (-2, -1)).name == "cpu"
    assert kernels.select("sparse_causal_attention", q, k, v, 5, (-2, -1)).name != "cpu"  # 5 does not divide 12
    many = tuple(range(-cpu.MAX_SOURCES, 1))  # one source too many for the C kernel
    assert kernels.select("sparse_causal_attention", q, k, v, 6, many).name != "cpu"
    big = _qkv((2, 1, 256, 4))  # 2 · 256² scores per block > MAX_BLOCK_SCORES
    assert kernels.select("sparse_causal_attention", *big, 2, (-2, -1)).name != "cpu"


def test_sparse_causal_frame_count_as_a_0d_integer_tensor():
    q, k, v = _qkv((12, 2, 16, 8), seed=9)
    out = kernels.sparse_causal_attention(q, k, v, torch.tensor(6), (-2, -1), backend="cpu")  # as a trace may pass it
    torch.testing.assert_close(out, reference.sparse_causal_reference(q, k, v, 6), rtol=1e-5, atol=2e-6)
    for not_a_count in (torch.tensor(6.0), torch.tensor(True)):
        assert not cpu.sparse_causal_supports(q, k, v, not_a_count)


def test_sparse_causal_offsets_beyond_the_kernels_range_go_to_the_reference_path():
    q, k, v = _qkv((6, 2, 8, 8), seed=10)
    offsets = (-(2**31),)  # clamps to frame 0 everywhere; the C kernel's int encoding cannot hold it
    assert kernels.select("sparse_causal_attention", q, k, v, 3, offsets).name == "sdpa"
    out = kernels.sparse_causal_attention(q, k, v, 3, offsets)
    torch.testing.assert_close(out, reference.sparse_causal_reference(q, k, v, 3, (None,)), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "sources, message",
    [
        (np.zeros((2, 3), np.int32), "int64"),
        (np.zeros((9, 3), np.int64), "1 <= S <= 8"),
        (np.full((2, 3), 3, np.int64), r"in \[0, 3\), got 3"),
        (np.full((2, 3), -1, np.int64), "got -1"),
        (np.zeros((2, 4), np.int64), "frames divide"),
    ],
)
def test_the_sparse_causal_extension_refuses_bad_sources(sources, message):
    qkv = [np.zeros((6, 2, 5, 4), np.float32) for _ in range(4)]
    with pytest.raises(ValueError, match=message):
        cpu._attention_cpu.sparse_causal_attention(*qkv, sources, 1.0, 1)


class _Temporal(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 24)

    def forward(self, x):  # x: (B·N, h, F, 8), read by sparse-causal attention as (B·F, h, N, 8) with F = N
        q, k, v = self.proj(x).chunk(3, dim=-1)
        return kernels.temporal_attention(q, k, v) + kernels.sparse_causal_attention(q, k, v, x.shape[0], (-1,))


@torch.no_grad()
def test_a_frozen_trace_holds_each_kernel_as_one_node():
    module = _Temporal().eval()
    x = torch.randn(16, 2, 60, 8)
    frozen = torch.jit.freeze(torch.jit.trace(module, (x,)))
    kinds = [node.kind() for node in frozen.graph.nodes()]
    assert "mindvideo::temporal_attention_cpu" in kinds and "mindvideo::sparse_causal_attention_cpu" in kinds
    other = torch.randn(16, 2, 60, 8)
    torch.testing.assert_close(frozen(other), module(other), rtol=0, atol=0)


@torch.no_grad()
def test_the_onnx_export_holds_plain_ops(tmp_path):
    module = _Temporal().eval()
    x = torch.randn(16, 2, 60, 8)
    path = tmp_path / "temporal.onnx"
    torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((2, 3, 4), np.float32),) * 4, "4-D float32"),
        ((np.zeros((1, 2, 3, 4), np.float64),) * 4, "4-D float32"),
        ((np.zeros((1, 2, 3, 4), np.float32),) * 3 + (np.zeros((1, 2, 3, 5), np.float32),), "shape of q"),
        (
            (np.zeros((1, 2, 3, 4), np.float32),) * 3 + (np.zeros((1, 2, 4, 3), np.float32).transpose(0, 1, 3, 2),),
            "C-contiguous",
        ),
        ((np.zeros((1, 2, 0, 4), np.float32),) * 4, "at least one row"),
    ],
)
def test_the_extension_refuses_bad_buffers(args, message):
    with pytest.raises(ValueError, match=message):
        cpu._attention_cpu.temporal_attention(*args, 1.0, 1)
