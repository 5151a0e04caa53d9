"""FMRIEncoder: shapes, the reference forward, MBM, attention maps, loading."""

from __future__ import annotations

import json

import pytest
import torch
from reference_oracle import oracle_encoder

from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, FMRIEncoderConfig


def test_forward_matches_functional_reference(reference_ckpt):
    folder = reference_ckpt / "fmri_encoder"
    encoder = FMRIEncoder.from_pretrained(folder).eval()
    state = torch.load(folder / "model.pth", weights_only=True)["model"]
    cfg = json.loads((folder / "config.json").read_text())
    x = torch.randn(3, cfg["window_size"], cfg["num_voxels"])
    with torch.no_grad():
        out = encoder(x)
    assert out.shape == (3, cfg["out_channel"], cfg["out_dim"])
    torch.testing.assert_close(out, oracle_encoder(state, cfg, x), atol=1e-5, rtol=1e-5)


def test_mbm_masks_the_same_patches_in_every_frame_and_scores_only_them():
    cfg = FMRIEncoderConfig.tiny(num_voxels=64).replace(decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
    encoder = FMRIEncoder(cfg)
    x = torch.randn(4, cfg.window_size, 64)
    loss, pred, mask = encoder.forward_mbm(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert pred.shape == x.shape and mask.shape == (4, cfg.num_patches)
    assert (mask.sum(1) == 3).all()  # 4 patches, 1 kept
    loss.backward()
    assert encoder.decoder.pred.weight.grad is not None
    # the loss is the mean squared error over the masked patches only
    with torch.no_grad():
        loss2, pred2, mask2 = encoder.forward_mbm(x, 0.75, generator=torch.Generator().manual_seed(0))
        err = (pred2 - x).reshape(4, 2, cfg.num_patches, cfg.patch_size).pow(2).mean(-1)  # (B, W, n)
        expected = err[mask2[:, None].expand_as(err)].mean()
    torch.testing.assert_close(loss2, expected)


def test_mbm_needs_a_decoder():
    with pytest.raises(ValueError, match="decoder_depth"):
        FMRIEncoder(FMRIEncoderConfig.tiny()).forward_mbm(torch.randn(1, 2, 128))


def test_attention_maps_are_distributions():
    encoder = FMRIEncoder(FMRIEncoderConfig.tiny(num_voxels=64)).eval()
    maps = encoder.attention_maps(torch.randn(2, 2, 64))
    assert len(maps) == encoder.config.depth
    spatial, temporal = maps[0]["spatial"], maps[0]["temporal"]
    assert spatial.shape == (2, 2, 4, 4, 4) and temporal.shape == (2, 4, 4, 2, 2)
    torch.testing.assert_close(spatial.sum(-1), torch.ones(spatial.shape[:-1]))


def test_num_voxels_override_and_mismatch(reference_ckpt):
    folder = reference_ckpt / "fmri_encoder"
    with pytest.raises(MindVideoError, match="channel_mapper"):
        FMRIEncoder.from_pretrained(folder, num_voxels=128)  # the learned token mapper cannot grow
    same = FMRIEncoder.from_pretrained(folder, num_voxels=70)  # 70 voxels → the same 4 patches
    assert same.config.num_voxels == 70
