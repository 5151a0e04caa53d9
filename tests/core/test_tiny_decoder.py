"""The tiny decoder: shapes and factor from the VAE config, a JSON/safetensors round trip, and decoder selection in the
pipeline and on the CLI (``--decoder tiny``), with clear errors where a checkpoint has none."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mindvideo.checkpoint import sd15_vae_config, tiny_vae_config
from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig, load_tiny_decoder
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline
from mindvideo.train.stages.vae import demo_vae_config


@pytest.fixture(scope="module")
def tiny_dec_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint plus a tiny_decoder/ (random weights, perturbed so its output depends on every layer)."""
    ckpt = shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("tiny-dec") / "ckpt")
    vae_config = json.loads((ckpt / "vae" / "config.json").read_text())
    torch.manual_seed(3)
    decoder = TinyDecoder(TinyDecoderConfig.for_vae(vae_config, width=8, blocks=1))
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    decoder.save_pretrained(ckpt / "tiny_decoder")
    return ckpt


@pytest.mark.parametrize(
    ("vae", "factor", "channels"),
    [
        (sd15_vae_config(), 8, (64, 64, 64, 32)),
        (tiny_vae_config(), 8, (64, 64, 64, 32)),
        (demo_vae_config(), 4, (64, 64, 32)),
    ],
)
def test_for_vae_picks_the_factor_and_decodes_to_the_vae_size(vae, factor, channels):
    config = TinyDecoderConfig.for_vae({**vae, "scaling_factor": 0.5})
    assert config.factor == factor and config.channels == channels and config.input_scale == 0.5
    decoder = TinyDecoder(config.replace(channels=tuple(c // 8 for c in channels)))
    images = decoder(torch.randn(2, 4, 3, 5) * 20)  # outliers: the soft clamp and tanh keep the range
    assert images.shape == (2, 3, 3 * factor, 5 * factor)
    assert images.abs().max() <= 1.0


@pytest.mark.parametrize(
    ("vae", "channels", "layers"),
    [(demo_vae_config(), (32, 16, 8), (2, 1, 1)), (sd15_vae_config(), (32, 16, 8, 4), (2, 1, 1, 1))],
)
def test_taper_halves_the_width_and_keeps_one_block_after_the_first_level(vae, channels, layers):
    config = TinyDecoderConfig.for_vae(vae, width=32, blocks=2, taper=True)
    assert config.channels == channels and config.layers_per_block == layers
    assert TinyDecoder(config)(torch.randn(1, 4, 2, 2)).shape == (1, 3, 2 * config.factor, 2 * config.factor)


def test_sd15_default_has_about_a_million_parameters():
    decoder = TinyDecoder(TinyDecoderConfig.for_vae(sd15_vae_config()))
    assert 0.8e6 < sum(p.numel() for p in decoder.parameters()) < 1.5e6


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    decoder = TinyDecoder(TinyDecoderConfig.tiny().replace(act_fn="silu", latent_clamp=0.0))
    decoder.save_pretrained(tmp_path / "tiny_decoder")
    decoder.save_pretrained(tmp_path / "tiny_decoder")  # atomic replace of an existing folder
    assert sorted(p.name for p in (tmp_path / "tiny_decoder").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "weights.sha256",
    ]
    saved = json.loads((tmp_path / "tiny_decoder" / "config.json").read_text())
    assert saved["_class_name"] == "TinyDecoder" and saved["channels"] == [8, 8, 8, 8]
    loaded = TinyDecoder.from_pretrained(tmp_path / "tiny_decoder")
    assert loaded.config == decoder.config
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(z), decoder.eval()(z))


def test_bad_folders_configs_and_inputs(tmp_path):
    with pytest.raises(MindVideoError, match="expected a tiny_decoder/ folder in the checkpoint"):
        load_tiny_decoder(tmp_path)
    TinyDecoder(TinyDecoderConfig.tiny()).save_pretrained(tmp_path / "tiny_decoder")
    config = json.loads((tmp_path / "tiny_decoder" / "config.json").read_text())
    (tmp_path / "tiny_decoder" / "config.json").write_text(json.dumps({**config, "layers_per_block": [1, 1]}))
    with pytest.raises(MindVideoError, match="expected a tiny decoder config"):
        load_tiny_decoder(tmp_path)
    (tmp_path / "tiny_decoder" / "config.json").write_text(json.dumps({**config, "channels": [8, 8, 8, 4]}))
    with pytest.raises(MindVideoError, match="to have shape"):
        load_tiny_decoder(tmp_path)
    with pytest.raises(MindVideoError, match=r"expected latents shaped \(N, 4, h, w\)"):
        TinyDecoder(TinyDecoderConfig.tiny())(torch.randn(1, 3, 4, 4))


def test_pipeline_decodes_with_the_tiny_decoder(tiny_dec_ckpt):
    pipe = MindVideoPipeline.from_pretrained(tiny_dec_ckpt)
    seen = []
    decode = pipe.decode
    pipe.decode = lambda latents, *args: seen.append(latents) or decode(latents, *args)  # records, then decodes
    fmri = np.random.default_rng(0).standard_normal((2, 2, 64)).astype(np.float32)
    cfg = GenerationConfig(num_frames=3, num_inference_steps=2, height=32, width=48)
    tiny = pipe(fmri, None, cfg, output="float", progress=False, decoder="tiny")
    vae = pipe(fmri, None, cfg, output="float", progress=False)
    assert torch.equal(seen[0], seen[1])  # the same latents, decoded two ways
    assert tiny.shape == vae.shape == (2, 3, 3, 32, 48)
    # the oracle: the tiny decoder applied by hand to the latents / the VAE scaling, frame by frame
    decoder = TinyDecoder.from_pretrained(tiny_dec_ckpt / "tiny_decoder")
    scaling = json.loads((tiny_dec_ckpt / "vae" / "config.json").read_text())["scaling_factor"]
    with torch.no_grad():
        for b in range(2):
            frames = decoder(seen[0][b].transpose(0, 1) / scaling)  # (F, 3, H, W)
            np.testing.assert_allclose(tiny[b], ((frames / 2 + 0.5).clamp(0, 1)).transpose(0, 1).numpy(), atol=1e-6)
    assert np.abs(tiny - vae).max() > 0.05


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_decoder_tiny(tiny_dec_ckpt, tiny_ckpt, fmri_file, tmp_path):
    common = ("--fmri", fmri_file, "--frames", 2, "--steps", 1, "--height", 32, "--width", 32)
    result = run("generate", "--checkpoint", tiny_dec_ckpt, *common, "--decoder", "tiny", "--out", tmp_path / "t.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "t.npy").shape == (2, 3, 2, 32, 32)
    # a checkpoint without tiny_decoder/: one error line, exit 2, nothing written
    out = tmp_path / "missing" / "x.npy"
    result = run("generate", "--checkpoint", tiny_ckpt, *common, "--decoder", "tiny", "--out", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: expected a tiny_decoder/ folder in the checkpoint")
    assert "mindvideo train tiny-decoder" in result.output
    assert not out.parent.exists() or not any(out.parent.iterdir())
    # the engine's torch backend reads the same folder (tests/engine/test_engine_tiny_decoder.py: the others)
    args = ("--checkpoint", tiny_ckpt, *common, "--decoder", "tiny", "--backend", "torch", "--out", out)
    result = run("generate", *args)
    assert result.exit_code == 2 and result.output.startswith("error: expected a tiny_decoder/ folder"), result.output
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_generation_size_checks_the_decoder_name():
    from mindvideo.pipeline import generation_size

    assert generation_size(GenerationConfig(decoder="tiny"), (64, 64), 8) == (64, 64)
    with pytest.raises(MindVideoError, match=r"expected a decoder among \['vae', 'tiny'\]"):
        generation_size(GenerationConfig(decoder="taesd"), (64, 64), 8)
    with pytest.raises(MindVideoError, match=r"expected a decoder among \['vae'\]"):
        generation_size(GenerationConfig(decoder="tiny"), (64, 64), 8, decoders=("vae",))


def test_stream_decoder_tiny_needs_the_folder(tiny_ckpt, tmp_path):
    (tmp_path / "in").mkdir()
    out = tmp_path / "live.mp4"
    args = ("stream", "--checkpoint", tiny_ckpt, "--source", f"folder:{tmp_path / 'in'}", "--sink", f"file:{out}")
    result = run(*args, "--decoder", "tiny")
    assert result.exit_code == 2 and "expected a tiny_decoder/ folder in the checkpoint" in result.output
    result = run(*args, "--decoder", "tiny", "--backend", "torch")
    assert result.exit_code == 2 and "expected a tiny_decoder/ folder in the checkpoint" in result.output
    assert not out.exists()


@pytest.mark.parametrize(("chunk", "tiny_chunk"), [(0, None), (16, 0), (16, -2), (2.5, None)])
def test_decode_frames_refuses_a_chunk_below_one(chunk, tiny_chunk):
    from mindvideo.errors import MindVideoError
    from mindvideo.pipeline import GenerationConfig

    with pytest.raises(MindVideoError, match="decode_chunk and tiny_decode_chunk"):
        GenerationConfig(decoder="tiny", decode_chunk=chunk, tiny_decode_chunk=tiny_chunk).decode_frames()
    assert GenerationConfig(decoder="tiny", decode_chunk=3).decode_frames() == 12
    assert GenerationConfig(decoder="vae", decode_chunk=3, tiny_decode_chunk=5).decode_frames() == 3
