"""The student UNet contract: a guidance input g, zero-initialised so a fresh student is its teacher's conditional
model; config keys that round-trip and leave teacher configs unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from mindvideo.checkpoint import build_random_checkpoint, load_unet, save_component
from mindvideo.errors import MindVideoError
from mindvideo.models import VideoUNet, VideoUNetConfig


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny checkpoint whose every UNet weight is perturbed away from its init (temporal layers included)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt", "tiny", init_scale=0.05) / "unet"


def inputs(batch: int = 2, frames: int = 3):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, frames, 8, 8, generator=gen)
    cond = torch.randn(batch, 7, 32, generator=gen)
    return x, torch.tensor([981, 40][:batch]), cond


@pytest.mark.parametrize("how", ["load_unet", "student_of"])
def test_fresh_student_equals_the_teacher_for_any_g(teacher_dir, how):
    teacher = load_unet(teacher_dir).eval()
    if how == "load_unet":
        student = load_unet(teacher_dir, guidance_embedding=True).eval()
    else:
        student = VideoUNet.student_of(teacher, guidance_range=(1.0, 8.0)).eval()
    assert set(student.state_dict()) - set(teacher.state_dict()) == {
        f"guidance_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }
    x, t, cond = inputs()
    with torch.no_grad():
        expected = teacher(x, t, cond)
        for g in (1.0, 3.5, torch.tensor([2.0, 12.5])):
            assert torch.equal(student(x, t, cond, guidance=g), expected)


def test_a_trained_guidance_embedding_changes_the_output(teacher_dir):
    """The embedding is wired in: once its last layer is non-zero, g changes the prediction."""
    student = load_unet(teacher_dir, guidance_embedding=True).eval()
    with torch.no_grad():
        student.guidance_embedding.linear_2.weight.normal_(std=0.1)
        x, t, cond = inputs()
        a, b = student(x, t, cond, guidance=2.0), student(x, t, cond, guidance=6.0)
    assert (a - b).abs().max() > 1e-4


def test_guidance_missing_on_a_student_or_given_to_a_teacher(teacher_dir):
    teacher = load_unet(teacher_dir)
    student = VideoUNet.student_of(teacher)
    x, t, cond = inputs(1)
    with pytest.raises(MindVideoError, match="expected a guidance input g for a student UNet"):
        student(x, t, cond)
    with pytest.raises(MindVideoError, match="expected no guidance input for a teacher UNet"):
        teacher(x, t, cond, guidance=3.0)
    with pytest.raises(MindVideoError, match="already a student"):
        VideoUNet.student_of(student)


def test_student_config_round_trip(teacher_dir, tmp_path):
    student = VideoUNet.student_of(load_unet(teacher_dir), guidance_range=(1.0, 8.0), schedulers=("lcm",))
    with torch.no_grad():
        student.guidance_embedding.linear_2.bias.fill_(0.25)
    save_component(student, tmp_path / "unet")
    saved = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert saved["guidance_embedding"] is True and saved["guidance_range"] == [1.0, 8.0]
    assert saved["schedulers"] == ["lcm"]
    loaded = load_unet(tmp_path / "unet")
    assert loaded.config == student.config
    assert torch.equal(loaded.guidance_embedding.linear_2.bias, student.guidance_embedding.linear_2.bias)
    # a student's own weights must be complete: its embedding is not silently re-initialised
    (tmp_path / "unet" / "config.json").write_text(json.dumps(saved))
    torch.testing.assert_close(load_unet(tmp_path / "unet").state_dict(), student.state_dict())


def test_old_teacher_configs_load_with_the_flags_off(teacher_dir, tmp_path):
    old = json.loads((teacher_dir / "config.json").read_text())
    for key in ("guidance_embedding", "guidance_range", "schedulers"):
        old.pop(key)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(old))
    (folder / "diffusion_pytorch_model.safetensors").symlink_to(teacher_dir / "diffusion_pytorch_model.safetensors")
    unet = load_unet(folder)
    assert unet.config == VideoUNetConfig.tiny()
    assert not hasattr(unet, "guidance_embedding")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"guidance_range": [1.0, 8.0]}, "guidance_embedding is False"),
        ({"guidance_embedding": True, "guidance_range": [8.0, 1.0]}, "0 < low <= high"),
        ({"guidance_embedding": True, "schedulers": ["lcm", "heun"]}, "subset of"),
    ],
)
def test_bad_student_configs_are_refused(teacher_dir, tmp_path, changes, message):
    data = {**json.loads((teacher_dir / "config.json").read_text()), **changes}
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(data))
    with pytest.raises(MindVideoError, match=message):
        load_unet(tmp_path / "unet")
