"""Settings that used to be dropped or replaced without a word are refused or reported: zero sizes, options without
the option they qualify, --dtype/--device an export's backend cannot honour, unknown config keys, diffusers UNet
settings VideoUNet does not compute; the negative condition a generation used is printed and recorded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, VideoUNet
from mindvideo.models.fmri_encoder import FMRIEncoderConfig
from mindvideo.pipeline import GenerationConfig, generation_size


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def written(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------------- generate options


@pytest.mark.parametrize("flag", ["--frames", "--height", "--width"])
def test_zero_sizes_are_refused(tiny_ckpt, fmri_file, tmp_path, flag):
    out = tmp_path / "out" / "x.npy"
    result = run("generate", "--checkpoint", tiny_ckpt, "--fmri", fmri_file, flag, 0, "--steps", 1, "--out", out)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}': 0 is not in the range x>=1" in result.output
    assert written(out.parent) == []


def test_zero_steps_or_frames_name_what_is_wrong():
    with pytest.raises(MindVideoError) as steps:
        generation_size(GenerationConfig(num_inference_steps=0), (64, 64), 8)
    assert "denoising step (--steps / num_inference_steps)" in str(steps.value)
    assert "found --steps 0" in str(steps.value) and "frame" not in str(steps.value)
    with pytest.raises(MindVideoError) as frames:
        generation_size(GenerationConfig(num_frames=0), (64, 64), 8)
    assert "found --frames 0" in str(frames.value) and "step" not in str(frames.value)
    # 0 is a size, not "unset": refused rather than replaced by the default
    with pytest.raises(MindVideoError, match="positive multiples of 8; found 0×64"):
        generation_size(GenerationConfig(height=0), (64, 64), 8)
    assert generation_size(GenerationConfig(), (64, 48), 8) == (64, 48)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trs", "1:2"], "expected --scan with --trs (the TR range of a raw run); found --trs 1:2 without --scan"),
        (["--split", "train"], "expected --data with --split; found no --data"),
    ],
)
def test_qualifiers_without_their_input_are_refused(tiny_ckpt, fmri_file, tmp_path, extra, message):
    out = tmp_path / "out" / "x.npy"
    result = run("generate", "--checkpoint", tiny_ckpt, "--fmri", fmri_file, *extra, "--steps", 1, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    assert written(out.parent) == []


@pytest.fixture
def fp16_export(tmp_path):
    """An export folder's manifest saying its graphs are fp16 and its TensorRT UNet engine bf16 (no graphs: the
    settings are checked before any is loaded)."""
    from mindvideo.export.manifest import FORMAT, MANIFEST, VERSION

    folder = tmp_path / "exported"
    folder.mkdir()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "settings": {"precision": "fp16", "vae_precision": "fp32"},
        "networks": {},
        "engines": {"unet": {"precision": "bf16"}},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "backend, extra, message",
    [
        ("onnxruntime", ["--dtype", "fp32"], "precision of the export in {engine} (fp16) with --backend onnxruntime"),
        ("onnxruntime", ["--dtype", "bf16"], "re-export with --precision bf16"),
        ("tensorrt", ["--dtype", "fp16"], "precision of the export in {engine} (bf16) with --backend tensorrt"),
        ("onnxruntime", ["--device", "cuda:1"], "expected --device among ['cpu', 'cuda', 'cuda:0']"),
        ("onnxruntime", ["--device", "mps"], "found --device mps"),
        ("tensorrt", ["--device", "cpu"], "expected --device among ['cuda', 'cuda:0'] with --backend tensorrt"),
    ],
)
def test_settings_an_export_cannot_honour_are_refused(fp16_export, fmri_file, tmp_path, backend, extra, message):
    out = tmp_path / "out" / "x.npy"
    args = ["generate", "--backend", backend, "--engine", fp16_export, "--fmri", fmri_file, *extra, "--out", out]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message.format(engine=fp16_export) in result.output
    assert written(out.parent) == []


@pytest.mark.parametrize(
    "backend, extra, message",
    [
        ("onnxruntime", ["--dtype", "fp32"], "precision of the export in {engine} (fp16) with --backend onnxruntime"),
        ("tensorrt", ["--dtype", "fp16"], "precision of the export in {engine} (bf16) with --backend tensorrt"),
        ("onnxruntime", ["--device", "cuda:1"], "expected --device among ['cpu', 'cuda', 'cuda:0']"),
        ("tensorrt", ["--device", "cpu"], "expected --device among ['cuda', 'cuda:0'] with --backend tensorrt"),
    ],
)
def test_stream_refuses_settings_an_export_cannot_honour(tiny_ckpt, fp16_export, tmp_path, backend, extra, message):
    (tmp_path / "trs").mkdir()
    out = tmp_path / "out" / "live.gif"
    args = ["--checkpoint", tiny_ckpt, "--backend", backend, "--engine", fp16_export, "--max-trs", 1, *extra]
    result = run("stream", *args, "--source", f"folder:{tmp_path / 'trs'}", "--sink", f"file:{out}")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message.format(engine=fp16_export) in result.output
    assert written(out.parent) == [] and written(tmp_path / "trs") == []


@pytest.mark.parametrize("extra", [[], ["--dtype", "fp16"], ["--device", "cpu"], ["--device", "cuda"]])
def test_settings_an_export_honours_pass_the_check(fp16_export, fmri_file, tmp_path, extra):
    """The defaults, the export's own precision and its devices get past the check (here to the empty export)."""
    out = tmp_path / "out" / "x.npy"
    args = ["--backend", "onnxruntime", "--engine", fp16_export, "--fmri", fmri_file, *extra, "--out", out]
    result = run("generate", *args)
    assert result.exit_code == 2, result.output
    assert "expected network 'fmri_encoder'" in result.output or "CUDA execution provider" in result.output
    assert "--dtype" not in result.output and "--device among" not in result.output
    assert written(out.parent) == []


def test_dtype_and_device_of_the_torch_backends_are_not_checked_against_an_export(tiny_ckpt, fmri_file, tmp_path):
    out = tmp_path / "x.npy"
    args = ["--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--frames", 1, "--steps", 1, "--height", 16, "--width", 16]
    result = run("generate", "--backend", "torch", *args, "--dtype", "fp32", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "x.npy.json").read_text())["settings"]["dtype"] == "fp32"


# ------------------------------------------------------------------------------------------------ negative condition


def test_negative_condition_is_printed_and_recorded(tiny_ckpt, fmri_file, tmp_path):
    common = ["--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--frames", 2, "--steps", 1, "--height", 16]
    out = tmp_path / "mean.gif"
    result = run("generate", *common, "--width", 24, "--out", out)
    assert result.exit_code == 0, result.output
    line = "negative condition: the mean of the input windows (the checkpoint has no data_transform/)"
    assert result.output.rstrip().endswith(line), result.output
    record = json.loads((tmp_path / "mean.gif.json").read_text())
    assert record["negative_condition"]["source"] == "input_mean" and record["negative_condition"]["text"] in line
    assert record["files"] == [str(tmp_path / "mean_000.gif"), str(tmp_path / "mean_001.gif")]
    settings = record["settings"]
    assert (settings["num_frames"], settings["height"], settings["width"], settings["device"]) == (2, 16, 24, "cpu")
    assert record["input"] == {"fmri": str(fmri_file)} and record["model"]["checkpoint"] == str(tiny_ckpt)
    # an explicit negative, and none at all without guidance
    negative = tmp_path / "negative.npy"
    np.save(negative, np.load(fmri_file)[0])
    result = run("generate", *common, "--negative-fmri", negative, "--out", tmp_path / "explicit.npy")
    assert result.exit_code == 0, result.output
    assert f"negative condition: --negative-fmri ({negative})" in result.output
    assert json.loads((tmp_path / "explicit.npy.json").read_text())["negative_condition"]["source"] == "file"
    result = run("generate", *common, "--guidance", 1, "--out", tmp_path / "unguided.npy")
    assert result.exit_code == 0 and "negative condition: none (guidance 1" in result.output, result.output


# --------------------------------------------------------------------------------------------------- configs


def test_unknown_config_keys_are_named():
    base = FMRIEncoderConfig.tiny().to_dict()
    with pytest.raises(MindVideoError) as error:
        FMRIEncoderConfig.from_dict({**base, "num_voxel": 64, "depht": 3})
    assert "expected only FMRIEncoderConfig keys" in str(error.value)
    assert "found unknown 'depht', 'num_voxel'" in str(error.value)
    # diffusers bookkeeping (``_`` keys) is not a setting
    config = FMRIEncoderConfig.from_dict({**base, "_class_name": "fMRIEncoder", "_diffusers_version": "0.11.1"})
    assert config == FMRIEncoderConfig.tiny()


def test_unknown_key_in_a_component_folder_names_the_file(tiny_ckpt, tmp_path):
    for name, model in (("fmri_encoder", FMRIEncoder), ("unet", VideoUNet)):
        folder = shutil.copytree(tiny_ckpt / name, tmp_path / name)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "use_flash": True}))
        with pytest.raises(MindVideoError) as error:
            model.from_pretrained(folder)
        assert str(folder / "config.json") in str(error.value) and "unknown 'use_flash'" in str(error.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("upcast_attention", True, "upcast_attention=True (supported: False)"),
        ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift='scale_shift' (supported: 'default')"),
        ("act_fn", "gelu", "act_fn='gelu' (supported: 'silu')"),
        ("mid_block_scale_factor", 2.0, "mid_block_scale_factor=2.0 (supported: 1.0)"),
        ("only_cross_attention", [True, False], "only_cross_attention=[True, False] (supported: False)"),
        ("conv_in_kernel", 1, "conv_in_kernel=1 (supported: 3)"),
        ("time_embedding_type", "fourier", "time_embedding_type='fourier' (supported: 'positional')"),
        ("class_embed_type", "timestep", "class_embed_type='timestep' (supported: None)"),
        ("transformer_layers_per_block", [1, 2], "transformer_layers_per_block=[1, 2] (supported: 1)"),
        ("layers_per_block", [1, 2], "layers_per_block=(1, 2) (supported: one integer for every block)"),
        ("dropout", 0.1, "dropout=0.1 (supported: 0.0)"),
    ],
)
def test_unet_settings_videounet_does_not_compute_are_refused(tiny_ckpt, tmp_path, key, value, message):
    folder = shutil.copytree(tiny_ckpt / "unet", tmp_path / "unet")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(MindVideoError) as error:
        VideoUNet.from_pretrained(folder)
    assert str(folder / "config.json") in str(error.value) and message in str(error.value)


def test_diffusers_settings_at_the_values_videounet_computes_load(tiny_ckpt, tmp_path):
    """A diffusers or reference (Tune-A-Video UNet3DConditionModel) config spells out settings VideoUNet does not
    implement at their defaults: those load, into the same model."""
    folder = shutil.copytree(tiny_ckpt / "unet", tmp_path / "unet")
    config = json.loads((folder / "config.json").read_text())
    diffusers_defaults = {
        "_class_name": "UNet3DConditionModel",
        "_diffusers_version": "0.11.1",
        "center_input_sample": False,
        "only_cross_attention": [False, False],
        "dual_cross_attention": False,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "class_embed_type": None,
        "num_class_embeds": None,
        "mid_block_only_cross_attention": None,
        "dropout": 0,
        "transformer_layers_per_block": 1,
        "addition_embed_type_num_heads": 64,
    }
    (folder / "config.json").write_text(json.dumps({**config, **diffusers_defaults}))
    assert VideoUNet.from_pretrained(folder).config == VideoUNet.from_pretrained(tiny_ckpt / "unet").config


def test_unsupported_unet_checkpoint_exits_2_through_generate(tiny_ckpt, fmri_file, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    config = json.loads((ckpt / "unet" / "config.json").read_text())
    (ckpt / "unet" / "config.json").write_text(json.dumps({**config, "upcast_attention": True}))
    out = tmp_path / "out" / "x.npy"
    result = run("generate", "--checkpoint", ckpt, "--fmri", fmri_file, "--steps", 1, "--out", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "upcast_attention=True (supported: False)" in result.output
    assert written(out.parent) == []


# --------------------------------------------------------------------------------------------------- export size


def test_export_default_size_follows_the_vae_factor(tiny_ckpt, tmp_path):
    """A 2-level VAE (factor 2) makes the default export size sample_size × 2, as --help says."""
    from diffusers import AutoencoderKL

    from mindvideo.checkpoint import tiny_vae_config
    from mindvideo.export.onnx import inspect_checkpoint
    from mindvideo.export.spec import SpecOptions, build_specs

    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    shutil.rmtree(ckpt / "vae")
    two_levels = {**tiny_vae_config(), "block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2}
    AutoencoderKL(**{**two_levels, "up_block_types": ("UpDecoderBlock2D",) * 2}).save_pretrained(str(ckpt / "vae"))
    shapes = inspect_checkpoint(ckpt).shapes
    assert shapes.vae_scale == 2 and shapes.default_latent == 8
    decoder = build_specs(shapes, SpecOptions())["vae_decoder"]
    assert decoder.outputs[0].shape[-2:] == (16, 16)
    assert build_specs(shapes, SpecOptions(height=24, width=32))["vae_decoder"].outputs[0].shape[-2:] == (24, 32)
    help_text = " ".join(run("export", "--help").output.split())
    assert "f = 2^(len(block_out_channels) − 1) (8 for SD) [default: the UNet's sample_size × f]" in help_text
    assert "× 8" not in help_text
