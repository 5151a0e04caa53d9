"""ExportSpec: shapes, profiles, dynamic axes and the manifest round trip, from configs alone."""

from __future__ import annotations

import pytest
import torch

from mindvideo.errors import MindVideoError
from mindvideo.export.spec import Axis, ExportSpec, NetworkShapes, SpecOptions, build_specs

TINY = NetworkShapes(
    window=2,
    voxels=128,
    cond_tokens=8,
    cond_dim=32,
    latent_channels=4,
    unet_out_channels=4,
    vae_scale=8,
    image_channels=3,
    default_latent=8,
)


def test_axis_parse_and_validation():
    assert Axis.parse("1:2:4", "batch") == Axis(1, 2, 4)
    assert Axis.parse("3", "frames") == Axis(3, 3, 3)
    for bad in ("4:2:1", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(MindVideoError, match="axis"):
            Axis.parse(bad, "batch")


def test_specs_from_configs_shapes_and_profile():
    specs = build_specs(TINY, SpecOptions(batch=Axis(1, 2, 4), frames=Axis(1, 8, 16)))
    unet = specs["unet"]
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert unet.shapes(batch=3, frames=5) == {
        "sample": (3, 4, 5, 8, 8),
        "timestep": (3,),
        "encoder_hidden_states": (3, 8, 32),
        "noise_pred": (3, 4, 5, 8, 8),
    }
    assert unet.profile()["sample"] == ((1, 4, 1, 8, 8), (2, 4, 8, 8, 8), (4, 4, 16, 8, 8))
    assert unet.dynamic_axes()["sample"] == {0: "batch", 2: "frames"}
    assert unet.max_shapes()["noise_pred"] == (4, 4, 16, 8, 8)
    assert specs["fmri_encoder"].shapes(batch=2) == {"fmri": (2, 2, 128), "cond": (2, 8, 32)}
    decoder = specs["vae_decoder"]
    assert decoder.shapes(frames=6) == {"latent": (6, 4, 8, 8), "images": (6, 3, 64, 64)}
    assert decoder.axes["frames"] == Axis(1, 8, 16)


def test_precision_and_image_size_options():
    specs = build_specs(TINY, SpecOptions(precision="fp16", height=96, width=128))
    assert specs["unet"].shapes()["sample"][-2:] == (12, 16)
    assert specs["unet"].inputs[0].dtype == "float16"
    assert specs["unet"].inputs[1].dtype == "float32"  # timestep stays fp32
    assert specs["vae_decoder"].inputs[0].dtype == "float32"  # VAE stays fp32 unless asked
    with pytest.raises(MindVideoError, match="divisible by 8"):
        build_specs(TINY, SpecOptions(height=100))
    with pytest.raises(MindVideoError, match="--precision"):
        build_specs(TINY, SpecOptions(precision="bf16"))


def test_dims_outside_profile_are_refused():
    unet = build_specs(TINY, SpecOptions(frames=Axis(1, 4, 8)))["unet"]
    with pytest.raises(MindVideoError, match=r"frames in \[1, 8\]"):
        unet.shapes(frames=9)


def test_trace_dims_avoid_one_and_equal_sizes():
    unet = build_specs(TINY, SpecOptions())["unet"]
    dims = unet.trace_dims
    assert min(dims.values()) >= 2 and dims["batch"] != dims["frames"]
    inputs = unet.trace_inputs()
    assert inputs["sample"].shape == (dims["batch"], 4, dims["frames"], 8, 8)


def test_sample_inputs_are_seeded_and_in_range():
    unet = build_specs(TINY, SpecOptions())["unet"]
    a, b = unet.sample_inputs({"batch": 2, "frames": 3}, seed=7), unet.sample_inputs({"batch": 2, "frames": 3}, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["timestep"].min() >= 0 and a["timestep"].max() <= 999


def test_spec_round_trips_through_json():
    import json

    for spec in build_specs(TINY, SpecOptions(precision="fp16")).values():
        again = ExportSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec
        assert again.profile() == spec.profile()


def test_mismatched_encoder_and_unet_are_refused():
    with pytest.raises(MindVideoError, match="cross_attention_dim"):
        NetworkShapes.from_configs({"out_dim": 32}, {"cross_attention_dim": 768}, {})
