"""Helpers for the engine tests: a deterministic linear denoiser, the schedulers under test, and the oracle loop
driven by diffusers' own ``scale_model_input`` / ``step`` (as :mod:`mindvideo.sampling` drives them)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

from mindvideo.checkpoint import SCHEDULER_CONFIG

SD15 = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
SHAPE = (2, 4, 3, 8, 8)  # (B, C, F, h, w)
COND_DIM = 8

# name -> (scheduler factory, DDIM eta)
SCHEDULERS: dict[str, tuple[Callable[[], Any], float]] = {
    "ddim": (lambda: DDIMScheduler.from_config(SD15), 0.0),
    "ddim_eta": (lambda: DDIMScheduler.from_config(SD15), 0.7),
    "dpmpp_2m": (
        lambda: DPMSolverMultistepScheduler.from_config(SD15, algorithm_type="dpmsolver++", solver_order=2),
        0.0,
    ),
    "euler": (lambda: EulerDiscreteScheduler.from_config(SD15), 0.0),
}
VARIANTS: dict[str, tuple[Callable[[], Any], float]] = {  # further configs the plans claim to follow
    "dpmpp_2m_heun": (lambda: DPMSolverMultistepScheduler.from_config(SD15, solver_type="heun"), 0.0),
    "dpmpp_2m_sigma_min": (lambda: DPMSolverMultistepScheduler.from_config(SD15, final_sigmas_type="sigma_min"), 0.0),
    "ddim_v": (
        lambda: DDIMScheduler.from_config(SD15, prediction_type="v_prediction", timestep_spacing="trailing"),
        0.0,
    ),
    "dpmpp_2m_v": (lambda: DPMSolverMultistepScheduler.from_config(SD15, prediction_type="v_prediction"), 0.0),
    "euler_v_karras": (
        lambda: EulerDiscreteScheduler.from_config(SD15, prediction_type="v_prediction", use_karras_sigmas=True),
        0.0,
    ),
}


def c_host_loop() -> ModuleType:
    """``mindvideo.engine._host_loop``. When it did not build: a failure where the environment variable ``CI`` is set
    (CI services set ``CI=true``), so a broken C build cannot pass as skipped tests; elsewhere a skip and a warning."""
    from mindvideo.engine import host_loop

    if "c" in host_loop.IMPLEMENTATIONS:
        return host_loop.IMPLEMENTATIONS["c"]
    why = "the C sampling loop mindvideo.engine._host_loop is not built (pip install -e . with a C compiler)"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why}; CI={os.environ['CI']} is set, so its tests must run, not skip", pytrace=False)
    warnings.warn(f"{why}: its tests are skipped", stacklevel=2)
    pytest.skip(why)


class LinearDenoiser:
    """A fixed random linear map of (x, t, cond): ``eps = W·x + (t/1000)·(cond @ V)``, mixing channels and adding a
    per-row condition term (so guidance matters). Deterministic float32 numpy; records the calls it gets."""

    def __init__(self, channels: int = SHAPE[1], seed: int = 0, dtype: type = np.float32):
        rng = np.random.default_rng(seed)
        self.w = (0.9 * np.eye(channels) + 0.05 * rng.standard_normal((channels, channels))).astype(dtype)
        self.v = (0.3 * rng.standard_normal((COND_DIM, channels))).astype(dtype)
        self.dtype = dtype
        self.calls: list[tuple[tuple[int, ...], Any, float]] = []

    def __call__(self, x: Any, t: Any, cond: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self.calls.append((x.shape, t, float(np.abs(x).max())))
        flat = x.reshape(x.shape[0], x.shape[1], -1)  # (rows, C, F·h·w)
        eps = (
            np.einsum("ij,bjn->bin", self.w, flat)
            + (self.dtype(float(t) / 1000) * (cond.astype(self.dtype) @ self.v))[:, :, None]
        )
        return np.ascontiguousarray(eps.reshape(x.shape), dtype=self.dtype)


def make_inputs(init_noise_sigma: float, guidance_scale: float, steps: int, seed: int = 1):
    """``(latents, cond, variance_noise)``: unit noise × σ_init, [negative; positive] conditions when guided, and
    a per-step noise draw shared by the loops under test and the oracle."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(init_noise_sigma)
    rows = 2 * SHAPE[0] if guidance_scale > 1.0 else SHAPE[0]
    cond = rng.standard_normal((rows, COND_DIM), dtype=np.float32)
    noises = rng.standard_normal((steps, *SHAPE), dtype=np.float32)
    return latents, cond, lambda step: noises[step]


def diffusers_loop(
    scheduler: Any,
    steps: int,
    latents: np.ndarray,
    denoise: Callable,
    cond: np.ndarray,
    guidance_scale: float,
    eta: float = 0.0,
    variance_noise: Callable | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """The oracle: guidance then ``scheduler.step`` each step, in the latents' dtype (float32 or float64).
    ``generator`` is what ``LCMScheduler.step`` draws its re-noising noise from."""
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(latents.copy())
    guided = guidance_scale > 1.0
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        eps = torch.from_numpy(denoise(model_input.numpy(), t, cond))
        if guided:
            eps_neg, eps_pos = eps.chunk(2)
            eps = eps_neg + guidance_scale * (eps_pos - eps_neg)
        kwargs = {}
        if isinstance(scheduler, DDIMScheduler) and eta > 0:
            kwargs = {"eta": eta, "variance_noise": torch.from_numpy(variance_noise(i)).to(x.dtype)}
        if isinstance(scheduler, LCMScheduler):
            kwargs = {"generator": generator}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x.numpy()


def lcm_inputs(steps: int, guidance_scale: float, seed: int = 3):
    """``(latents, cond, step_noise, oracle_latents, oracle_generator)`` by the noise convention: the engine's
    latents and precomputed ``(S − 1, *SHAPE)`` step noise from one seeded CPU generator, and for the diffusers
    oracle the same latents from a second generator of that seed, left where ``LCMScheduler.step`` draws next."""
    from mindvideo.sampling import initial_noise, step_noise

    latents, generator = initial_noise(SHAPE, seed, 1.0)
    noise = step_noise(generator, SHAPE, steps).numpy()
    oracle_latents, oracle_generator = initial_noise(SHAPE, seed, 1.0)
    rows = 2 * SHAPE[0] if guidance_scale > 1.0 else SHAPE[0]
    cond = np.random.default_rng(seed).standard_normal((rows, COND_DIM), dtype=np.float32)
    return latents.numpy(), cond, noise, oracle_latents.numpy(), oracle_generator


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected|."""
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def make_student_checkpoint(teacher, folder, perturb: float = 0.1, **changes: Any):
    """A copy of checkpoint folder ``teacher`` whose UNet is ``VideoUNet.student_of`` its UNet (``changes`` set e.g.
    ``schedulers``), the guidance embedding perturbed by ``perturb`` so that g changes the output."""
    import shutil

    from mindvideo.checkpoint import load_unet, save_component
    from mindvideo.models import VideoUNet

    shutil.copytree(teacher, folder)
    student = VideoUNet.student_of(load_unet(teacher / "unet"), **changes)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in student.guidance_embedding.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * perturb)
    shutil.rmtree(folder / "unet")
    save_component(student, folder / "unet")
    return folder
