"""The guided denoising loop (MinD-Video §3.4: adversarial guidance) over any denoiser.

``denoise(x, t, cond) -> eps`` is the one seam every backend implements (eager torch, ONNX Runtime, TensorRT): ``x``
is the scaled model input ``(2B, 4, F, h, w)``, ``t`` the timestep, ``cond`` the stacked conditions
``(2B, L, D)`` = [negative; positive]. A distilled student (``guidance_embedding``) runs one pass per step instead:
``denoise(x, t, cond, guidance)`` with ``x`` ``(B, 4, F, h, w)``, only the positive ``cond`` ``(B, L, D)`` and the
guidance scale as a ``(B,)`` fp32 input. Scheduler maths comes from diffusers' schedulers.

Noise convention (every path: this loop, the engine's loops): one CPU generator seeded with the seed draws the
initial latents, then — for LCM's stochastic multistep sampling — the re-noising noise of steps 0 … S−2, in order
(:func:`step_noise`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[..., torch.Tensor]  # (x, t, cond) -> eps, or (x, t, cond, guidance) -> eps for a student

SCHEDULERS = ("ddim", "dpm", "euler", "lcm")


TEACHER_DEFAULTS = ("ddim", 50, 12.5)  # scheduler, steps, guidance scale (MinD-Video's evaluation g)
LCM_DEFAULT_STEPS = 4


def sampling_defaults(
    facts, scheduler: str | None = None, steps: int | None = None, guidance: float | None = None
) -> tuple[str, int, float]:
    """The sampling settings left unset (``None``) for a UNet described by ``facts`` (its config, or anything with
    ``guidance_embedding`` / ``guidance_range`` / ``schedulers``): DDIM, 50 steps and g = 12.5 for a teacher; for a
    student the first scheduler it was distilled for (4 steps with LCM) and 12.5 clamped into its g range."""
    allowed = getattr(facts, "schedulers", None)
    scheduler = scheduler or (allowed[0] if allowed else TEACHER_DEFAULTS[0])
    if steps is None:
        steps = LCM_DEFAULT_STEPS if scheduler == "lcm" else TEACHER_DEFAULTS[1]
    if guidance is None:
        guidance, low_high = TEACHER_DEFAULTS[2], getattr(facts, "guidance_range", None)
        if getattr(facts, "guidance_embedding", False) and low_high is not None:
            guidance = min(max(guidance, low_high[0]), low_high[1])
    return scheduler, steps, guidance


def make_scheduler(config: dict[str, Any], kind: str = "ddim"):
    """A diffusers scheduler built from a checkpoint's scheduler config: DDIM, DPM-Solver++(2M), Euler or LCM's
    multistep consistency sampler (for a consistency-distilled student)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    base = {k: v for k, v in config.items() if not k.startswith("_")}
    if kind == "ddim":
        return DDIMScheduler.from_config(base)
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2)
    if kind == "euler":
        return EulerDiscreteScheduler.from_config(base)
    if kind == "lcm":
        return LCMScheduler.from_config(base)
    raise ValueError(f"unknown scheduler {kind!r}; expected one of {SCHEDULERS}")


def initial_latents(shape: tuple[int, ...], seed: int, init_noise_sigma: float) -> torch.Tensor:
    """The reference noise convention: ``randn(shape, generator=Generator("cpu").manual_seed(seed))·σ_init``, fp32
    on the CPU whatever the device, so a seed gives the same video everywhere."""
    return initial_noise(shape, seed, init_noise_sigma)[0]


def initial_noise(shape: tuple[int, ...], seed: int, init_noise_sigma: float) -> tuple[torch.Tensor, torch.Generator]:
    """:func:`initial_latents` and the generator that drew them, positioned for the step noise (:func:`step_noise`)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32) * init_noise_sigma, generator


def step_noise(generator: torch.Generator, shape: tuple[int, ...], steps: int) -> torch.Tensor:
    """The re-noising noise of a stochastic multistep sampler (LCM): ``(steps − 1, *shape)`` fp32, CPU.

    Draw ``i`` is ``randn(shape, generator=generator, dtype=float32)``, drawn in step order from the generator that
    drew the initial latents (the last step adds no noise), exactly what passing ``generator`` to
    ``LCMScheduler.step`` draws; precomputed, it fills the static noise buffers of the engine loops."""
    draws = [torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(max(steps - 1, 0))]
    return torch.stack(draws) if draws else torch.empty((0, *shape), dtype=torch.float32)


@torch.no_grad()
def guided_sample(
    denoise: Denoiser,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    guidance_scale: float,
    num_inference_steps: int,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    single_pass: bool = False,
    start: int = 0,
) -> torch.Tensor:
    """Classifier-free (adversarial) guidance: ``eps = eps_neg + g·(eps_pos − eps_neg)``, then ``scheduler.step``.

    ``cond`` is ``(2B, L, D)`` = [negative; positive] when ``guidance_scale > 1``, else ``(B, L, D)``. With
    ``single_pass`` (a guidance-distilled student) ``cond`` is the positive ``(B, L, D)`` and g goes to the denoiser
    as an input. ``generator`` draws DDIM's η-noise, or LCM's re-noising noise (then it must be the generator that
    drew ``latents``, see :func:`initial_noise`). ``start``: run only the steps from this timestep index on
    (``latents`` already noised to it, see :func:`warm_latents`). Returns the final latents ``(B, 4, F, h, w)`` in
    ``latents``' dtype.
    """
    guided = guidance_scale > 1.0 and not single_pass
    lcm = type(scheduler).__name__ == "LCMScheduler"
    if lcm and generator is None:
        raise ValueError("LCM sampling needs the generator that drew the initial latents (see initial_noise)")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    g = torch.full((latents.shape[0],), float(guidance_scale), dtype=torch.float32, device=latents.device)
    for t in scheduler.timesteps[start:]:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        eps = (denoise(x, t, cond, g) if single_pass else denoise(x, t, cond)).to(latents.dtype)
        if guided:
            eps_neg, eps_pos = eps.chunk(2)
            eps = eps_neg + guidance_scale * (eps_pos - eps_neg)
        if lcm:  # fp32 step: the step noise is drawn in fp32 whatever the model dtype (the noise convention)
            latents = scheduler.step(eps.float(), t, latents.float(), **step_kwargs).prev_sample.to(latents.dtype)
        else:
            latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        if progress is not None:
            progress(1)
    return latents


def warm_start_index(steps: int, strength: float) -> int:
    """The timestep index a warm start of ``strength`` s ∈ (0, 1] begins at: ⌊(1 − s)·S⌋ (s = 1: every step)."""
    return int((1.0 - strength) * steps)


def warm_latents(
    scheduler, previous: torch.Tensor, noise: torch.Tensor, steps: int, strength: float
) -> tuple[torch.Tensor, int]:
    """A warm start: the previous clip's final latents re-noised to timestep index ``⌊(1 − s)·S⌋`` of the scheduler's
    ``steps`` timesteps with ``scheduler.add_noise`` (``noise``: unit Gaussian, drawn by the noise convention).
    Returns the latents (``previous``' dtype and device) and the start index for :func:`guided_sample`."""
    start = warm_start_index(steps, strength)
    scheduler.set_timesteps(steps, device=previous.device)
    t = scheduler.timesteps[start].reshape(1).repeat(previous.shape[0])
    x = scheduler.add_noise(previous.float(), noise.to(previous.device, torch.float32), t)
    return x.to(previous.dtype), start


def _step_kwargs(scheduler, eta: float, generator: torch.Generator | None) -> dict[str, Any]:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
