"""VideoUNet against diffusers' UNet2DConditionModel and the attention semantics."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from reference_oracle import Clip, load_oracle_unet

from mindvideo import kernels
from mindvideo.models import VideoUNet, VideoUNetConfig


@pytest.fixture(scope="module")
def sd_unet_dir(tmp_path_factory):
    """A tiny SD-style UNet saved by diffusers, every weight perturbed away from its init."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("sd") / "unet"
    unet.save_pretrained(path)
    return path, unet.eval()


@pytest.mark.parametrize("frames", range(1, 7))
def test_identical_frames_equal_the_image_unet(sd_unet_dir, frames):
    path, reference = sd_unet_dir
    ours = VideoUNet.from_pretrained(path).eval()  # temporal layers at their (zero-output) initialisation
    image = torch.randn(2, 4, 8, 8)
    cond, t = torch.randn(2, 7, 32), torch.tensor(421)
    with torch.no_grad():
        video = ours(image[:, :, None].expand(-1, -1, frames, -1, -1).contiguous(), t, cond)
        expected = reference(image, t, cond).sample
    for f in range(frames):
        torch.testing.assert_close(video[:, :, f], expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("frames", [1, 4])
def test_unet_matches_the_reference_oracle(tiny_ckpt, reference_ckpt, frames):
    """Distinct frames, every layer (temporal too) perturbed: ε equals diffusers' UNet2DConditionModel with the
    reference's video changes bolted on (reference_oracle.py) to float32 rounding (~6e-7 relative); a 1 % error
    in any one attention scale moves it by 8e-5 (temporal) to 6e-4 (cross)."""
    ours = VideoUNet.from_pretrained(tiny_ckpt / "unet").eval()
    oracle = load_oracle_unet(reference_ckpt / "unet")
    size, dim = oracle.config.sample_size, oracle.config.cross_attention_dim
    generator = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 4, frames, size, size, generator=generator)
    cond = torch.randn(2, 7, dim, generator=generator)
    t = torch.tensor([30, 700])
    Clip.frames = frames
    with torch.no_grad():
        eps = ours(x, t, cond)
        flat = x.permute(0, 2, 1, 3, 4).reshape(-1, 4, size, size)
        expected = oracle(flat, t.repeat_interleave(frames), encoder_hidden_states=cond.repeat_interleave(frames, 0))
    expected = expected.sample.reshape(2, frames, 4, size, size).permute(0, 2, 1, 3, 4)
    err = float((eps - expected).norm() / expected.norm())
    print(f"relative error to the oracle: {err:.1e}")
    assert err < 1e-5


def test_state_dict_keys_are_diffusers_plus_temporal(sd_unet_dir):
    path, reference = sd_unet_dir
    ours = set(VideoUNet.from_pretrained(path).state_dict())
    theirs = set(reference.state_dict())
    assert theirs <= ours
    assert all("attn_temp." in k or "norm_temp." in k for k in ours - theirs)
    assert any("attn_temp.to_q" in k for k in ours - theirs)


def test_sd15_size_and_odd_latents():
    with torch.device("meta"):
        unet = VideoUNet(VideoUNetConfig.sd15())
    image_params = sum(p.numel() for n, p in unet.named_parameters() if "_temp." not in n)
    assert image_params == 859_520_964  # Stable Diffusion 1.5's UNet
    tiny = VideoUNet(VideoUNetConfig.tiny()).eval()
    with torch.no_grad():
        out = tiny(torch.randn(1, 4, 3, 9, 11), 10, torch.randn(1, 5, 32))
    assert out.shape == (1, 4, 3, 9, 11)


def naive_sparse_causal(q, k, v, frames, offsets):
    """Frame by frame, no batching tricks: the definition in MinD-Video §3.3."""
    bf, _, _, d = q.shape
    out = torch.empty_like(q)
    for i in range(bf):
        b, f = divmod(i, frames)
        sources = [0 if o is None else min(max(f + o, 0), frames - 1) for o in offsets]
        keys = torch.cat([k[b * frames + s] for s in sources], dim=1)  # (h, S·N, d)
        values = torch.cat([v[b * frames + s] for s in sources], dim=1)
        out[i] = torch.softmax(q[i] @ keys.transpose(-1, -2) / d**0.5, dim=-1) @ values
    return out


@pytest.mark.parametrize("frames", [1, 2, 5])
@pytest.mark.parametrize("offsets", [(-2, -1), (None, -1), (-1,)])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_sparse_causal_backends_match_definition(frames, offsets, backend):
    q, k, v = (torch.randn(2 * frames, 2, 5, 8) for _ in range(3))
    out = kernels.sparse_causal_attention(q, k, v, frames, offsets, backend=backend)
    torch.testing.assert_close(out, naive_sparse_causal(q, k, v, frames, offsets), atol=1e-5, rtol=1e-5)


def test_sdpa_chunking_matches_reference(monkeypatch):
    from mindvideo.kernels import reference

    monkeypatch.setattr(reference, "_SDPA_MAX_BATCH_HEADS", 8)  # force several chunks
    q, k, v = (torch.randn(12, 2, 6, 8) for _ in range(3))
    torch.testing.assert_close(
        kernels.temporal_attention(q, k, v, backend="sdpa"), kernels.temporal_attention(q, k, v, backend="reference")
    )


def test_sparse_causal_is_causal():
    """With temporal attention off and per-frame norms, frame f never sees later frames."""
    cfg = VideoUNetConfig.tiny().replace(temporal_attention=False, video_norm="frame")
    unet = VideoUNet(cfg).eval()
    x, cond = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 32)
    changed = x.clone()
    changed[:, :, 3] += 1.0
    with torch.no_grad():
        a, b = unet(x, 5, cond), unet(changed, 5, cond)
    torch.testing.assert_close(a[:, :, :3], b[:, :, :3])
    assert not torch.allclose(a[:, :, 3], b[:, :, 3])


def test_registry_selection_and_errors(monkeypatch):
    from mindvideo.errors import MindVideoError

    q = torch.randn(2, 1, 3, 4)
    assert kernels.select("temporal_attention", q, q, q).name in kernels.backends("temporal_attention")
    with kernels.use_backend("reference"):
        assert kernels.select("temporal_attention", q, q, q).name == "reference"
    monkeypatch.setenv("MINDVIDEO_ATTENTION_BACKEND", "nope")
    with pytest.raises(MindVideoError, match="nope"):
        kernels.temporal_attention(q, q, q)
