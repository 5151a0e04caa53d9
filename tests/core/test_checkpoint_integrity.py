"""Damaged checkpoints are refused with one line naming the file (and the tensor or key), exit code 2 and nothing
written: non-finite weights, weight files that no longer match ``weights.sha256``, incomplete scheduler / encoder
configs; a reference ``.pth`` that also pickles its ``argparse.Namespace`` loads."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mindvideo.checkpoint import load_components, load_fmri_encoder
from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.weights import CHECKSUMS, read_checksums, verification


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def _generate(ckpt: Path, fmri: Path, out: Path, *extra: str):
    args = ["generate", "--checkpoint", str(ckpt), "--fmri", str(fmri), "--frames", "2", "--steps", "1"]
    return _runner().invoke(main, [*args, "--out", str(out), *extra])


def _assert_refused(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, (result.output, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: expected"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not list(out.parent.glob(f"*{out.stem}*")), list(out.parent.iterdir())


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path) -> Path:
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def _edit_tensor(folder: Path, key: str, edit) -> None:
    """Rewrite one tensor of a component's safetensors file (the checksums are left as they were)."""
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state[key] = edit(state[key].clone())
    save_file(state, str(path), metadata={"format": "pt"})


def test_save_writes_a_sha256sum_file_per_component(tiny_ckpt):
    for component in ("fmri_encoder", "unet", "vae"):
        sums = read_checksums(tiny_ckpt / component)
        assert list(sums) == ["diffusion_pytorch_model.safetensors"], component
    if shutil.which("sha256sum"):  # the file is in sha256sum's own format
        check = subprocess.run(["sha256sum", "-c", CHECKSUMS], cwd=tiny_ckpt / "unet", capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.strip().endswith(": OK"), check.stdout + check.stderr


def test_nan_in_a_unet_tensor_is_refused_by_name(ckpt, fmri_file, tmp_path):
    _edit_tensor(ckpt / "unet", "conv_out.bias", lambda t: t.index_fill_(0, torch.tensor([1]), float("nan")))
    (ckpt / "unet" / CHECKSUMS).unlink()  # finiteness is checked with or without checksums
    out = tmp_path / "clip.npy"
    result = _generate(ckpt, fmri_file, out)
    _assert_refused(result, out, "finite weights", "1 NaN/inf values in tensor 'conv_out.bias'")


def test_infinite_vae_weight_is_refused(ckpt):
    key = next(k for k in load_file(str(ckpt / "vae" / "diffusion_pytorch_model.safetensors")) if "decoder" in k)
    _edit_tensor(ckpt / "vae", key, lambda t: t.fill_(float("inf")))
    with verification(False), pytest.raises(MindVideoError, match=f"NaN/inf values in tensor '{key}'"):
        load_components(ckpt)


def test_a_flipped_bit_fails_the_checksum_unless_verification_is_off(ckpt, fmri_file, tmp_path):
    weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data: still a readable file, silently different numbers
    weights.write_bytes(bytes(data))
    out = tmp_path / "clip.npy"
    _assert_refused(_generate(ckpt, fmri_file, out), out, f"{weights} to match its sha256 in weights.sha256")
    unchecked = _generate(ckpt, fmri_file, out, "--no-verify-weights")
    assert unchecked.exit_code == 0, (unchecked.output, unchecked.stderr)
    again = _generate(ckpt, fmri_file, tmp_path / "again.npy")  # the flag does not outlive its run
    assert again.exit_code == 2 and "sha256" in again.stderr


def test_a_folder_without_checksums_loads_silently(reference_ckpt, caplog):
    with caplog.at_level(logging.INFO, logger="mindvideo"):
        load_components(reference_ckpt, vae=False)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "sha256" in r.getMessage()]


@pytest.mark.parametrize(
    "config, missing",
    [
        ({}, "num_train_timesteps, beta_start, beta_end, beta_schedule missing"),
        ({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}, "beta_start, beta_end missing"),
    ],
)
def test_empty_or_partial_scheduler_config_names_the_missing_keys(ckpt, fmri_file, tmp_path, config, missing):
    (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    out = tmp_path / "clip.npy"
    _assert_refused(_generate(ckpt, fmri_file, out), out, "scheduler_config.json", missing)


def test_encoder_config_without_num_voxels_names_it(ckpt, fmri_file, tmp_path):
    path = ckpt / "fmri_encoder" / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "num_voxels"}))
    out = tmp_path / "clip.npy"
    _assert_refused(_generate(ckpt, fmri_file, out), out, "FMRIEncoderConfig keys", "num_voxels missing")


def test_reference_pth_with_a_pickled_namespace_loads(reference_ckpt, tmp_path):
    folder = shutil.copytree(reference_ckpt / "fmri_encoder", tmp_path / "fmri_encoder")
    plain = load_fmri_encoder(folder)
    state = torch.load(folder / "model.pth", weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=2.5e-4, mask_ratio=0.75)}, folder / "model.pth")
    loaded = load_fmri_encoder(folder)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), loaded.state_dict().values()))


def test_reference_pth_with_another_pickled_class_is_refused_in_one_line(reference_ckpt, tmp_path):
    folder = shutil.copytree(reference_ckpt / "fmri_encoder", tmp_path / "fmri_encoder")
    state = torch.load(folder / "model.pth", weights_only=True)
    torch.save({**state, "where": Path("/data")}, folder / "model.pth")
    with pytest.raises(MindVideoError) as caught:
        load_fmri_encoder(folder)
    message = str(caught.value)
    assert "pickled pathlib." in message and "re-save its state dict alone" in message and "\n" not in message
