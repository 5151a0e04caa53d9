"""The whole tiny VideoUNet with the Triton attention kernels equals it with the torch reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from kernel_cases import BACKEND, DEVICE, rel_err, requires_triton

from mindvideo import kernels
from mindvideo.models.unet import VideoUNet, VideoUNetConfig

pytestmark = requires_triton


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("frame_offsets", [(-2, -1), (None, -1)], ids=["prev2", "first+prev"])
def test_tiny_unet_fp32(frame_offsets, monkeypatch, gen):
    from mindvideo.kernels import sparse_causal, temporal

    torch.manual_seed(0)
    unet = VideoUNet(dataclasses.replace(VideoUNetConfig.tiny(), frame_offsets=frame_offsets)).to(DEVICE).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():  # wake the zero-initialised temporal output projections
            if "attn_temp.to_out" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    frames = 3
    x = torch.randn(2, 4, frames, 8, 8, generator=gen).to(DEVICE)
    cond = torch.randn(2, 7, 32, generator=gen).to(DEVICE)
    t = torch.tensor([10.0, 500.0], device=DEVICE)

    sc_calls = _count_calls(monkeypatch, sparse_causal, "sparse_causal_attention_fwd")
    t_calls = _count_calls(monkeypatch, temporal, "temporal_attention_fwd")
    with torch.no_grad(), kernels.use_backend(BACKEND):
        out = unet(x, t, cond)
    with torch.no_grad(), kernels.use_backend("reference"):
        ref = unet(x, t, cond)
        ref_no_temporal = _without_temporal(unet, x, t, cond)

    assert sc_calls and t_calls, "the Triton kernels did not run"
    assert len(sc_calls) == len(t_calls) == 4  # down 1, mid 1, up 2 transformer blocks
    assert rel_err(ref, ref_no_temporal) > 1e-3, "temporal layers must matter, else they are not tested"
    err = rel_err(out, ref)
    assert err <= 1e-5, f"relative error {err:.2e}"


def _without_temporal(unet, x, t, cond):
    saved = {n: p.clone() for n, p in unet.named_parameters() if "attn_temp.to_out" in n}
    for n, p in unet.named_parameters():
        if n in saved:
            p.zero_()
    try:
        return unet(x, t, cond)
    finally:
        for n, p in unet.named_parameters():
            if n in saved:
                p.copy_(saved[n])
