"""Checkpoint folders: our layout, the reference layout, a plain SD UNet, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mindvideo.checkpoint import load_components, read_state_dict, write_checksums
from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, VideoUNet


def test_reference_layout_loads_the_same_weights(tiny_ckpt, ref_ckpt_weights):
    ours, ref = ref_ckpt_weights
    for name in ("fmri_encoder", "unet"):
        a, b = ours[name].state_dict(), ref[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_reference_encoder_mask_token_is_ignored(reference_ckpt):
    """The reference encoder's state dict has an MAE ``mask_token`` our encoder does not use: loading drops it."""
    state = read_state_dict(reference_ckpt / "fmri_encoder" / "model.pth")
    assert state["mask_token"].shape == (1, 1, 32)
    encoder = FMRIEncoder.from_pretrained(reference_ckpt / "fmri_encoder")
    assert "mask_token" not in encoder.state_dict() and set(encoder.state_dict()) == set(state) - {"mask_token"}


@pytest.fixture(scope="module")
def ref_ckpt_weights(tiny_ckpt, reference_ckpt):
    return load_components(tiny_ckpt), load_components(reference_ckpt)


def test_plain_sd_unet_folder_is_inflated(tiny_ckpt, tmp_path):
    """A 2-D SD UNet (no temporal keys, .bin) loads with temporal layers at their identity initialisation."""
    folder = tmp_path / "sd_unet"
    folder.mkdir()
    unet = VideoUNet.from_pretrained(tiny_ckpt / "unet")
    state = {k: v for k, v in unet.state_dict().items() if "_temp." not in k}
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    cfg = json.loads((tiny_ckpt / "unet" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    inflated = VideoUNet.from_pretrained(folder)
    outs = [m for n, m in inflated.named_modules() if n.endswith("attn_temp.to_out.0")]
    assert outs and all(not m.weight.any() and not m.bias.any() for m in outs)


def test_missing_key_is_named(tiny_ckpt, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(tiny_ckpt / "unet", folder)
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    state.pop("conv_in.weight")
    from safetensors.torch import save_file

    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    write_checksums(folder)  # re-saved by hand, checksums updated: the key check is what speaks
    with pytest.raises(MindVideoError, match=r"diffusion_pytorch_model.*conv_in\.weight"):
        VideoUNet.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "no_weights", "no_config", "bad_json"])
def test_damaged_component_gives_one_clear_error(tiny_ckpt, tmp_path, damage):
    folder = tmp_path / "unet"
    shutil.copytree(tiny_ckpt / "unet", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "no_config":
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text("{not json")
    with pytest.raises(MindVideoError, match=str(folder)):
        VideoUNet.from_pretrained(folder)


def test_missing_component_folder(tiny_ckpt, tmp_path):
    shutil.copytree(tiny_ckpt, tmp_path / "ckpt", ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(MindVideoError, match="vae"):
        load_components(tmp_path / "ckpt")


def test_round_trip_save(tiny_ckpt, tmp_path):
    unet = VideoUNet.from_pretrained(tiny_ckpt / "unet")
    unet.save_pretrained(tmp_path / "u")
    again = VideoUNet.from_pretrained(tmp_path / "u")
    assert again.config == unet.config
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), again.state_dict().values()))
