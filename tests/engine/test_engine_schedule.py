"""Sampling plans: coefficients against closed forms and diffusers' own arrays, and the configs they refuse."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from engine_testing import SCHEDULERS, SD15, VARIANTS, LinearDenoiser, diffusers_loop, make_inputs, relative_error

from mindvideo.checkpoint import SCHEDULER_CONFIG
from mindvideo.engine import SamplingPlan, make_plan
from mindvideo.errors import MindVideoError

STEPS = 25


def test_ddim_is_eq_12_in_closed_form():
    scheduler = DDIMScheduler.from_config(SD15)
    plan = make_plan(scheduler, STEPS)
    scheduler.set_timesteps(STEPS)
    abar = scheduler.alphas_cumprod.double().numpy()
    t = scheduler.timesteps.numpy()
    prev = np.where(t - 1000 // STEPS >= 0, abar[np.maximum(t - 1000 // STEPS, 0)], abar[0])
    a, b = plan.coefficients[:, 0], plan.coefficients[:, 1]
    np.testing.assert_allclose(a, np.sqrt(prev / abar[t]), rtol=1e-12)
    np.testing.assert_allclose(b, np.sqrt(1 - prev) - np.sqrt(prev * (1 - abar[t]) / abar[t]), rtol=1e-10)
    assert not plan.stateful and not plan.stochastic
    np.testing.assert_array_equal(plan.timesteps, t)
    np.testing.assert_array_equal(plan.input_scale, 1.0)


def test_ddim_eta_noise_is_diffusers_variance():
    scheduler = DDIMScheduler.from_config(SD15)
    plan = make_plan(scheduler, STEPS, eta=0.7)
    scheduler.set_timesteps(STEPS)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # diffusers' formula, without float32 cancellation
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    variance = [float(scheduler._get_variance(int(t), int(t) - 1000 // STEPS)) for t in scheduler.timesteps]
    np.testing.assert_allclose(plan.coefficients[:, 6], 0.7 * np.sqrt(variance), rtol=1e-12)
    assert plan.stochastic


def test_euler_steps_by_sigma_difference():
    scheduler = EulerDiscreteScheduler.from_config(SD15)
    plan = make_plan(scheduler, STEPS)
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas.double().numpy()
    np.testing.assert_array_equal(plan.coefficients[:, 0], 1.0)
    np.testing.assert_array_equal(plan.coefficients[:, 1], sigmas[1:] - sigmas[:-1])
    np.testing.assert_allclose(plan.input_scale, 1 / np.sqrt(sigmas[:-1] ** 2 + 1), rtol=1e-15)
    assert plan.init_noise_sigma == pytest.approx(float(scheduler.init_noise_sigma))
    assert plan.timesteps.dtype == np.float32


def test_dpmpp_2m_orders_and_final_denoise():
    scheduler = DPMSolverMultistepScheduler.from_config(SD15, algorithm_type="dpmsolver++", solver_order=2)
    plan = make_plan(scheduler, STEPS)
    scheduler.set_timesteps(STEPS)
    sigma = scheduler.sigmas.double().numpy()[:-1]
    a, c, e, p, q = (plan.coefficients[:, i] for i in (0, 2, 3, 4, 5))
    np.testing.assert_allclose(p, np.sqrt(sigma**2 + 1), rtol=1e-12)  # x̂₀ = (x − σ_t·ε)/α_t
    np.testing.assert_allclose(q, -sigma, rtol=1e-12)
    assert e[0] == 0.0 and e[-1] == 0.0 and np.all(e[1:-1] < 0)  # first order at both ends, 2M between
    assert a[-1] == 0.0 and c[-1] == 1.0  # the last step (σ → 0) returns x̂₀
    assert plan.stateful and plan.timesteps.dtype == np.int64


@pytest.mark.parametrize("name", [*SCHEDULERS, *VARIANTS])
def test_plan_in_float64_matches_diffusers_in_float64(name):
    """With rounding out of the way (float64 latents everywhere), running the plan reproduces diffusers' step to
    diffusers' own float32 scalar arithmetic (its sigmas / λ / dt are float32 0-d tensors)."""
    factory, eta = {**SCHEDULERS, **VARIANTS}[name]
    steps, g = 50, 12.5
    plan = make_plan(factory(), steps, eta=eta)
    latents, cond, noise = make_inputs(plan.init_noise_sigma, g, steps)
    denoise = LinearDenoiser(dtype=np.float64)
    expected = diffusers_loop(factory(), steps, latents.astype(np.float64), denoise, cond, g, eta, noise)
    x, state, batch = latents.astype(np.float64), np.zeros(latents.shape), latents.shape[0]
    for i, t in enumerate(plan.timesteps.tolist()):  # the plan's update, in float64
        eps = denoise(np.concatenate([x, x]) * plan.input_scale[i], t, cond)
        m = eps[:batch] + g * (eps[batch:] - eps[:batch])
        a, b, c, e, p, q, n = plan.step(i)
        d = p * x + q * m
        x, state = a * x + b * m + c * d + e * state + n * noise(i), d
    assert relative_error(x, expected) < 1e-6


def test_plan_from_config_dict_and_caller_scheduler_untouched():
    scheduler = DDIMScheduler.from_config(SD15)
    plan = make_plan(scheduler, 10)
    assert scheduler.num_inference_steps is None  # make_plan worked on its own copy
    from_dict = make_plan(SCHEDULER_CONFIG, 10)
    np.testing.assert_array_equal(plan.coefficients, from_dict.coefficients)
    assert plan.sampler == "ddim" and plan.num_steps == 10 and "ddim" in repr(plan)
    with pytest.raises(ValueError):
        plan.coefficients[0, 0] = 2.0  # read-only, safe to share
    assert plan.step(3) == tuple(plan.coefficients[3])


@pytest.mark.parametrize(
    ("scheduler", "kwargs", "match"),
    [
        (lambda: DDIMScheduler(), {}, "clip_sample"),  # diffusers' default clips x̂₀
        (lambda: DDIMScheduler.from_config(SD15, thresholding=True), {}, "thresholding"),
        (
            lambda: DPMSolverMultistepScheduler.from_config(SD15, algorithm_type="sde-dpmsolver++"),
            {},
            "dpmsolver\\+\\+",
        ),
        (lambda: DPMSolverMultistepScheduler.from_config(SD15, solver_order=3), {}, "solver_order"),
        (lambda: PNDMScheduler.from_config(SD15), {}, "PNDMScheduler"),
        (lambda: EulerDiscreteScheduler.from_config(SD15), {"eta": 0.5}, "eta = 0"),
        (lambda: DDIMScheduler.from_config(SD15), {"eta": 1.5}, "eta in \\[0, 1\\]"),
        (lambda: DDIMScheduler.from_config(SD15), {"num_steps": 0}, "positive number of sampling steps"),
        (lambda: DDIMScheduler.from_config(SD15, prediction_type="flow_prediction"), {}, "prediction_type"),
        (lambda: {**SCHEDULER_CONFIG, "_class_name": "LMSDiscreteScheduler"}, {}, "_class_name"),
    ],
)
def test_unsupported_schedulers_are_refused(scheduler, kwargs, match):
    kwargs = {"num_steps": 10, **kwargs}
    with pytest.raises(MindVideoError, match=match):
        make_plan(scheduler(), **kwargs)


def test_inconsistent_plans_are_refused():
    with pytest.raises(ValueError, match="inconsistent"):
        SamplingPlan("ddim", np.arange(3), np.ones(3), np.zeros((2, 7)), 1.0)
    with pytest.raises(MindVideoError, match="finite"):
        SamplingPlan("ddim", np.arange(2), np.ones(2), np.full((2, 7), np.inf), 1.0)
