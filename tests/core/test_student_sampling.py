"""Sampling with a distilled student: one pass per step with g as an input, the LCM scheduler and its noise
convention, and the refusals of settings a student was not trained for."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import LCMScheduler

from mindvideo.checkpoint import SCHEDULER_CONFIG, load_unet, save_component
from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.models import VideoUNet
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline
from mindvideo.sampling import guided_sample, initial_latents, initial_noise, make_scheduler, step_noise

SHAPE = (2, 4, 3, 8, 8)


def make_student(teacher_ckpt, folder, perturb: float = 0.0, **changes):
    shutil.copytree(teacher_ckpt, folder)
    student = VideoUNet.student_of(load_unet(teacher_ckpt / "unet"), **changes)
    if perturb:
        with torch.no_grad():
            for p in student.guidance_embedding.parameters():
                p.add_(torch.randn_like(p) * perturb)
    shutil.rmtree(folder / "unet")
    save_component(student, folder / "unet")
    return folder


@pytest.fixture(scope="module")
def guidance_student(tiny_ckpt, tmp_path_factory):
    """A fresh guidance student (equal to the teacher's conditional model), trained-for range (1, 8)."""
    folder = tmp_path_factory.mktemp("student") / "guidance"
    return make_student(tiny_ckpt, folder, guidance_range=(1.0, 8.0), schedulers=("ddim", "dpm", "euler"))


@pytest.fixture(scope="module")
def lcm_student(tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("student") / "lcm"
    return make_student(tiny_ckpt, folder, perturb=0.1, guidance_range=(1.0, 8.0), schedulers=("lcm",))


def fmri(rows: int = 2):
    return np.random.default_rng(0).standard_normal((rows, 2, 64)).astype(np.float32)


def test_step_noise_continues_the_initial_latents_generator():
    latents, generator = initial_noise(SHAPE, 7, 1.0)
    noise = step_noise(generator, SHAPE, 4)
    assert noise.shape == (3, *SHAPE) and noise.dtype == torch.float32
    assert torch.equal(latents, initial_latents(SHAPE, 7, 1.0))
    again = torch.Generator("cpu").manual_seed(7)
    draws = [torch.randn(SHAPE, generator=again) for _ in range(4)]
    assert torch.equal(latents, draws[0]) and all(torch.equal(noise[i], draws[i + 1]) for i in range(3))
    assert step_noise(torch.Generator().manual_seed(0), SHAPE, 1).shape == (0, *SHAPE)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lcm_loop_equals_scheduler_step_with_precomputed_noise(lcm_student, steps):
    """guided_sample (generator passed to LCMScheduler.step) = a hand-written loop that applies LCM's update
    ``prev = √ᾱ_prev·denoised + √(1−ᾱ_prev)·noise`` with the :func:`step_noise` buffers."""
    unet = load_unet(lcm_student / "unet").eval()
    cond = torch.randn(SHAPE[0], 7, 32, generator=torch.Generator().manual_seed(3))

    def denoise(x, t, c, g):
        return unet(x, t, c, guidance=g)

    latents, generator = initial_noise(SHAPE, 11, 1.0)
    ours = guided_sample(
        denoise, make_scheduler(SCHEDULER_CONFIG, "lcm"), latents, cond, 6.0, steps, generator=generator,
        single_pass=True,
    )  # fmt: skip
    latents, generator = initial_noise(SHAPE, 11, 1.0)
    noise = step_noise(generator, SHAPE, steps)
    scheduler = LCMScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items() if k != "_class_name"})
    scheduler.set_timesteps(steps)
    x = latents
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            out = scheduler.step(unet(x, t, cond, guidance=torch.full((2,), 6.0)), t, x, generator=torch.Generator())
            if i == steps - 1:
                x = out.denoised
            else:
                prev = scheduler.timesteps[i + 1]
                a = scheduler.alphas_cumprod[prev]
                x = a.sqrt() * out.denoised + (1 - a).sqrt() * noise[i]
    assert torch.linalg.vector_norm(ours - x) <= 1e-6 * torch.linalg.vector_norm(x)
    if steps > 1:  # the noise matters: other draws give another result
        other = guided_sample(
            denoise, make_scheduler(SCHEDULER_CONFIG, "lcm"), latents, cond, 6.0, steps,
            generator=torch.Generator().manual_seed(99), single_pass=True,
        )  # fmt: skip
        assert (other - x).abs().max() > 1e-3


def test_fresh_guidance_student_equals_the_unguided_teacher(tiny_ckpt, guidance_student):
    """One pass with only the positive condition: a fresh student at any g reproduces the teacher at g = 1."""
    cfg = GenerationConfig(num_frames=3, num_inference_steps=3)
    teacher = MindVideoPipeline.from_pretrained(tiny_ckpt)(fmri(), None, cfg, guidance_scale=1.0, output="float")
    student = MindVideoPipeline.from_pretrained(guidance_student)
    assert student.is_student
    video = student(fmri(), None, cfg, guidance_scale=5.0, output="float", progress=False)
    np.testing.assert_allclose(video, teacher, atol=1e-6, rtol=0)
    guided = MindVideoPipeline.from_pretrained(tiny_ckpt)(fmri(), None, cfg, guidance_scale=5.0, output="float")
    assert np.abs(guided - teacher).max() > 1e-3  # the two-pass teacher at g = 5 differs


def test_lcm_student_pipeline_is_seeded_and_uses_g(lcm_student):
    pipe = MindVideoPipeline.from_pretrained(lcm_student)
    cfg = GenerationConfig(num_frames=2, num_inference_steps=4, scheduler="lcm", guidance_scale=4.0)
    a, b = (pipe(fmri(1), None, cfg, output="float", progress=False) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    c = pipe(fmri(1), None, cfg, guidance_scale=7.0, output="float", progress=False)
    d = pipe(fmri(1), None, cfg, seed=5, output="float", progress=False)
    assert np.abs(a - c).max() > 1e-4 and np.abs(a - d).max() > 1e-4


def test_student_refuses_other_schedulers_and_warns_outside_its_range(lcm_student, guidance_student, caplog):
    pipe = MindVideoPipeline.from_pretrained(lcm_student)
    with pytest.raises(MindVideoError, match=r"expected a scheduler among \['lcm'\].*found 'ddim'.*--scheduler lcm"):
        pipe(fmri(1), None, GenerationConfig(num_frames=2, num_inference_steps=2, scheduler="ddim"), progress=False)
    with caplog.at_level(logging.WARNING, logger="mindvideo.pipeline"):
        pipe(fmri(1), None, GenerationConfig(2, None, None, 2, 12.5, "lcm"), progress=False)
    assert "outside the range [1, 8]" in caplog.text and "12.5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mindvideo.pipeline"):
        MindVideoPipeline.from_pretrained(guidance_student)(
            fmri(1), None, GenerationConfig(2, None, None, 2, 3.0, "dpm"), progress=False
        )
    assert "outside the range" not in caplog.text


def test_teacher_accepts_lcm(tiny_ckpt):
    """A teacher names no schedulers: LCM runs (two passes per step), seeded."""
    pipe = MindVideoPipeline.from_pretrained(tiny_ckpt)
    cfg = GenerationConfig(num_frames=2, num_inference_steps=2, scheduler="lcm", guidance_scale=3.0)
    a, b = (pipe(fmri(1), None, cfg, output="float", progress=False) for _ in range(2))
    np.testing.assert_array_equal(a, b)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_generate_defaults_follow_the_student(lcm_student, fmri_file, tmp_path):
    """No --scheduler/--steps/--guidance: LCM, 4 steps and g = 12.5 clamped into the student's range (8)."""
    base = ["generate", "--checkpoint", lcm_student, "--fmri", fmri_file, "--frames", 2]
    result = cli(*base, "--out", tmp_path / "default.npy")
    assert result.exit_code == 0, result.output
    explicit = ["--scheduler", "lcm", "--steps", 4, "--guidance", 8.0]
    assert cli(*base, *explicit, "--out", tmp_path / "explicit.npy").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "default.npy"), np.load(tmp_path / "explicit.npy"))
    assert cli(*base, *explicit[:4], "--guidance", 3.0, "--out", tmp_path / "g3.npy").exit_code == 0
    assert np.abs(np.load(tmp_path / "g3.npy") - np.load(tmp_path / "default.npy")).max() > 1e-4


def test_generate_with_a_student_warns_and_refuses(lcm_student, fmri_file, tmp_path, caplog):
    base = ["generate", "--checkpoint", lcm_student, "--fmri", fmri_file, "--frames", 2]
    out = tmp_path / "x.npy"
    result = cli(*base, "--scheduler", "ddim", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: expected a scheduler among ['lcm']" in result.output and not out.exists()
    negative = tmp_path / "negative.npy"
    np.save(negative, np.load(fmri_file)[0])
    with caplog.at_level(logging.WARNING):
        result = cli(*base, "--guidance", 12.5, "--negative-fmri", negative, "--out", out)
    assert result.exit_code == 0, result.output
    assert "outside the range [1, 8]" in caplog.text and "ignores --negative-fmri" in caplog.text
