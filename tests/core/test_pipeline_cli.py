"""The pipeline and the CLI: parity with the reference pipeline, output formats, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from reference_oracle import oracle_generate

from mindvideo.cli import main
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_matches_the_reference_pipeline(reference_ckpt, fmri_file, tmp_path):
    """Same checkpoint (reference layout), seed and settings → the same video as the reference algorithm."""
    fmri = np.load(fmri_file)
    negative = tmp_path / "negative.npy"
    np.save(negative, fmri.mean(0))
    out = tmp_path / "x.npy"
    result = run(
        "generate",
        "--checkpoint",
        reference_ckpt,
        "--fmri",
        fmri_file,
        "--negative-fmri",
        negative,
        "--frames",
        4,
        "--steps",
        3,
        "--guidance",
        12.5,
        "--seed",
        3407,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    ours = np.load(out)
    expected = oracle_generate(reference_ckpt, fmri, fmri.mean(0, keepdims=True), 4, 3, 12.5, 3407)
    assert ours.shape == expected.shape == (2, 3, 4, 64, 64)
    print(f"max |ours - reference| = {np.abs(ours - expected).max():.2e}")
    assert np.abs(ours - expected).max() <= 4e-5  # ~4e-6 seen; a 1 % error in one attention scale gives ≥ 1.4e-4


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "euler"])
def test_pipeline_outputs_and_schedulers(tiny_ckpt, scheduler):
    pipe = MindVideoPipeline.from_pretrained(tiny_ckpt)
    fmri = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    cfg = GenerationConfig(num_frames=3, num_inference_steps=2, scheduler=scheduler, height=32, width=48)
    video = pipe(fmri, None, cfg, progress=False)
    assert video.shape == (1, 3, 32, 48, 3) and video.dtype == np.uint8
    floats = pipe(fmri, None, cfg, output="float", progress=False)
    assert floats.shape == (1, 3, 3, 32, 48) and 0.0 <= floats.min() <= floats.max() <= 1.0
    np.testing.assert_array_equal((floats.transpose(0, 2, 3, 4, 1) * 255).round().astype(np.uint8), video)


def test_decode_in_chunks_equals_one_call(tiny_ckpt):
    import torch

    pipe = MindVideoPipeline.from_pretrained(tiny_ckpt)
    latents = torch.randn(1, 4, 5, 8, 8)
    np.testing.assert_allclose(pipe.decode(latents, chunk=2), pipe.decode(latents, chunk=16), atol=1e-5)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_cli_writes_video_files(tiny_ckpt, fmri_file, tmp_path, suffix):
    import imageio.v3 as iio

    out = tmp_path / f"clip{suffix}"
    result = run("generate", "--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--frames", 2, "--steps", 1, "--out", out)
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob(f"clip_*{suffix}"))
    assert [p.name for p in written] == [f"clip_000{suffix}", f"clip_001{suffix}"]
    assert iio.imread(written[0]).shape[-3:] == (64, 64, 3)


def test_info_prints_parameter_counts(tiny_ckpt):
    result = run("info", tiny_ckpt)
    assert result.exit_code == 0
    assert "temporal layers" in result.output and "fmri_encoder" in result.output
    sd = run("info", "--preset", "sd15")
    assert "859,520,964" in sd.output  # SD-1.5's UNet, plus the temporal layers on the next line


def bad_inputs(tmp_path, tiny_ckpt, fmri_file):
    wrong_voxels, nan, rank = tmp_path / "v.npy", tmp_path / "nan.npy", tmp_path / "rank.npy"
    np.save(wrong_voxels, np.zeros((2, 63), np.float32))
    np.save(nan, np.full((2, 64), np.nan, np.float32))
    np.save(rank, np.zeros((1, 1, 2, 64), np.float32))
    return {
        "missing checkpoint": (["--checkpoint", tmp_path / "nope", "--fmri", fmri_file], "no such folder"),
        "missing fmri": (["--checkpoint", tiny_ckpt, "--fmri", tmp_path / "none.npy"], "no such file"),
        "wrong voxel count": (["--checkpoint", tiny_ckpt, "--fmri", wrong_voxels], "mindvideo init --num-voxels 63"),
        "nan fmri": (["--checkpoint", tiny_ckpt, "--fmri", nan], "finite"),
        "wrong rank": (["--checkpoint", tiny_ckpt, "--fmri", rank], "rank 4"),
        "odd height": (["--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--height", 30], "multiples of 8"),
    }


@pytest.mark.parametrize(
    "case", ["missing checkpoint", "missing fmri", "wrong voxel count", "nan fmri", "wrong rank", "odd height"]
)
@pytest.mark.parametrize("suffix", [".npy", ".mp4"])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, tiny_ckpt, fmri_file, case, suffix):
    args, message = bad_inputs(tmp_path, tiny_ckpt, fmri_file)[case]
    out = tmp_path / "out" / f"x{suffix}"
    result = CliRunner().invoke(main, ["generate", *map(str, args), "--steps", "1", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_voxel_mismatch_points_to_the_data_transform_and_init():
    """A window of the wrong voxel count names the encoder's count, the data transform and, when only the voxels
    differ, the init command that makes a random checkpoint fit the data."""
    from mindvideo.errors import MindVideoError
    from mindvideo.pipeline import check_fmri

    with pytest.raises(MindVideoError) as voxels:
        check_fmri(np.zeros((2, 448), np.float32), 2, 128)
    message = str(voxels.value)
    assert "2 TRs × 128 voxels" in message and "found (2, 448)" in message and "data_transform" in message
    assert message.endswith("mindvideo init --num-voxels 448")
    with pytest.raises(MindVideoError) as window:
        check_fmri(np.zeros((3, 448), np.float32), 2, 128)
    assert "data_transform" in str(window.value) and "init" not in str(window.value)


def test_bad_output_suffix(tiny_ckpt, fmri_file, tmp_path):
    result = run("generate", "--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--out", tmp_path / "x.avi")
    assert result.exit_code == 2 and ".mp4" in result.output
