"""LCM in the engine: the plan against LCMScheduler's own arrays, the loop (C and numpy twin, via the ``sampler``
fixture) against ``LCMScheduler.step`` with the same noise, precomputed step noise and the single-pass mode."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DDIMScheduler, LCMScheduler
from engine_testing import (
    SD15,
    SHAPE,
    LinearDenoiser,
    c_host_loop,
    diffusers_loop,
    lcm_inputs,
    make_inputs,
    relative_error,
)

from mindvideo.engine import host_loop, make_plan
from mindvideo.errors import MindVideoError


def lcm(**changes) -> LCMScheduler:
    return LCMScheduler.from_config(SD15, **changes)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_plan_is_the_consistency_step_in_closed_form(steps):
    scheduler = lcm()
    plan = make_plan(scheduler, steps)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps.numpy()
    abar = scheduler.alphas_cumprod.double().numpy()
    c_skip = 0.25 / ((10.0 * t) ** 2 + 0.25)  # σ_data = 0.5, timestep_scaling = 10
    c_out = 10.0 * t / np.sqrt((10.0 * t) ** 2 + 0.25)
    renoise = np.append(np.sqrt(abar[t[1:]]), 1.0)  # √ᾱ of the next timestep; the last step returns f itself
    a, b, n = plan.coefficients[:, 0], plan.coefficients[:, 1], plan.coefficients[:, 6]
    np.testing.assert_allclose(a, renoise * (c_skip + c_out / np.sqrt(abar[t])), rtol=1e-12)
    np.testing.assert_allclose(b, -renoise * c_out * np.sqrt((1 - abar[t]) / abar[t]), rtol=1e-12)
    np.testing.assert_allclose(n[:-1], np.sqrt(1 - abar[t[1:]]), rtol=1e-12)
    assert n[-1] == 0.0 and not plan.stateful and plan.sampler == "lcm"
    assert plan.stochastic == (steps > 1) and plan.noise_rows == steps - 1
    np.testing.assert_array_equal(plan.timesteps, t)
    np.testing.assert_array_equal(plan.input_scale, 1.0)
    assert plan.init_noise_sigma == 1.0


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_single_pass_lcm_loop_matches_lcm_scheduler_step(sampler, steps):
    """A student's loop: B rows, eps as the model returns it, re-noising from the precomputed buffer drawn after the
    initial latents — against diffusers drawing the same noise from the generator inside ``step``."""
    latents, cond, noise, oracle_latents, generator = lcm_inputs(steps, 1.0)
    expected = diffusers_loop(lcm(), steps, oracle_latents, LinearDenoiser(), cond, 1.0, generator=generator)
    denoise = LinearDenoiser()
    plan = make_plan(lcm(), steps)
    out = sampler.run_loop(denoise, plan, latents, cond, guidance_scale=7.5, single_pass=True, step_noise=noise)
    print(f"LCM {steps} steps single pass ({sampler.__name__}): max rel {relative_error(out, expected):.2e}")
    assert relative_error(out, expected) <= 1e-6
    assert [shape for shape, _, _ in denoise.calls] == [SHAPE] * steps  # one pass of B rows per step


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_guided_lcm_loop_matches_lcm_scheduler_step(sampler, steps):
    """LCM steps behind classifier-free guidance (2B rows, [negative; positive]), e.g. for a teacher."""
    latents, cond, noise, oracle_latents, generator = lcm_inputs(steps, 7.5)
    expected = diffusers_loop(lcm(), steps, oracle_latents, LinearDenoiser(), cond, 7.5, generator=generator)
    out = sampler.run_loop(
        LinearDenoiser(), make_plan(lcm(), steps), latents, cond, guidance_scale=7.5, step_noise=noise
    )
    print(f"LCM {steps} steps guided ({sampler.__name__}): max rel {relative_error(out, expected):.2e}")
    assert relative_error(out, expected) <= 1e-6


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_lcm_prediction_types_match_lcm_scheduler_step(sampler, prediction_type):
    latents, cond, noise, oracle_latents, generator = lcm_inputs(4, 1.0)
    scheduler = lambda: lcm(prediction_type=prediction_type)
    expected = diffusers_loop(scheduler(), 4, oracle_latents, LinearDenoiser(), cond, 1.0, generator=generator)
    out = sampler.run_loop(LinearDenoiser(), make_plan(scheduler(), 4), latents, cond, step_noise=noise)
    assert relative_error(out, expected) <= 1e-6


def test_c_loop_equals_python_twin_bitwise_for_lcm():
    c_host_loop()  # fails under CI when the C loop did not build
    latents, cond, noise, _, _ = lcm_inputs(4, 1.0)
    plan = make_plan(lcm(), 4)
    c, py = (
        host_loop.IMPLEMENTATIONS[k].run_loop(LinearDenoiser(), plan, latents, cond, step_noise=noise)
        for k in ("c", "python")
    )
    np.testing.assert_array_equal(c, py)


def test_step_noise_buffer_equals_the_variance_noise_callback(sampler):
    """A precomputed buffer is read exactly like the callback's draws (DDIM η > 0 here: every step noisy)."""
    plan = make_plan(DDIMScheduler.from_config(SD15), 5, eta=0.6)
    latents, cond, variance_noise = make_inputs(1.0, 7.5, 5)
    buffer = np.stack([variance_noise(i) for i in range(5)])
    from_buffer = sampler.run_loop(LinearDenoiser(), plan, latents, cond, guidance_scale=7.5, step_noise=buffer)
    from_callback = sampler.run_loop(
        LinearDenoiser(), plan, latents, cond, guidance_scale=7.5, variance_noise=variance_noise
    )
    np.testing.assert_array_equal(from_buffer, from_callback)
    assert plan.noise_rows == 5


def test_single_pass_ignores_the_guidance_mix(sampler):
    """``single_pass``: the unguided loop whatever ``guidance_scale`` (g reaches a student through ``denoise``)."""
    latents, cond, noise, _, _ = lcm_inputs(4, 1.0)
    plan = make_plan(lcm(), 4)
    single = sampler.run_loop(
        LinearDenoiser(), plan, latents, cond, guidance_scale=9.0, single_pass=True, step_noise=noise
    )
    plain = sampler.run_loop(LinearDenoiser(), plan, latents, cond, step_noise=noise)
    np.testing.assert_array_equal(single, plain)
    student = lambda x, t, c: np.zeros(SHAPE, np.float32)
    with pytest.raises(MindVideoError, match="expected denoise output of shape \\(4, 4, 3, 8, 8\\)"):
        sampler.run_loop(student, plan, latents, cond, guidance_scale=9.0, step_noise=noise)  # 2B rows without it


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no noise", "expected step_noise or variance_noise for a stochastic plan \\(DDIM eta > 0, LCM\\)"),
        (
            "too few rows",
            "expected step_noise of shape \\(K,\\) \\+ \\(2, 4, 3, 8, 8\\) with K >= 3; found shape \\(2,",
        ),
        ("wrong shape", "expected step_noise of shape .*; found shape \\(3, 2, 4, 3, 8\\)"),
        ("float64", "expected step_noise as a C-contiguous float32 array; found buffer format 'd'"),
        ("both", "expected one noise source, step_noise or variance_noise; found both"),
    ],
)
def test_bad_step_noise_is_refused_before_any_step(sampler, case, match):
    latents, cond, noise, _, _ = lcm_inputs(4, 1.0)
    kwargs = {
        "no noise": {},
        "too few rows": {"step_noise": noise[:2]},
        "wrong shape": {"step_noise": np.ascontiguousarray(noise[..., 0])},
        "float64": {"step_noise": noise.astype(np.float64)},
        "both": {"step_noise": noise, "variance_noise": lambda i: noise[i]},
    }[case]
    denoise = LinearDenoiser()
    with pytest.raises(MindVideoError, match=match):
        sampler.run_loop(denoise, make_plan(lcm(), 4), latents, cond, **kwargs)
    assert denoise.calls == []


def test_one_lcm_step_needs_no_noise(sampler):
    latents, cond, noise, _, _ = lcm_inputs(1, 1.0)
    assert noise.shape == (0, *SHAPE)
    plan = make_plan(lcm(), 1)
    with_buffer = sampler.run_loop(LinearDenoiser(), plan, latents, cond, step_noise=noise)
    np.testing.assert_array_equal(with_buffer, sampler.run_loop(LinearDenoiser(), plan, latents, cond))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": 51}, "at most 50 LCM steps"),
        ({"num_steps": 4, "eta": 0.5}, "eta = 0"),
    ],
)
def test_lcm_plans_refuse_what_the_scheduler_cannot_do(kwargs, match):
    with pytest.raises(MindVideoError, match=match):
        make_plan(lcm(), **kwargs)
    with pytest.raises(MindVideoError, match="clip_sample"):
        make_plan(lcm(clip_sample=True), 4)
