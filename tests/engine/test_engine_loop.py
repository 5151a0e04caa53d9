"""The sampling loop (C and numpy twin, via the ``sampler`` fixture) against diffusers' ``scheduler.step``."""

from __future__ import annotations

import gc
import importlib
import logging
import sys

import numpy as np
import pytest
import torch
from engine_testing import (
    SCHEDULERS,
    SHAPE,
    VARIANTS,
    LinearDenoiser,
    c_host_loop,
    diffusers_loop,
    make_inputs,
    relative_error,
)

import mindvideo.engine as engine_package
from mindvideo.engine import host_loop, host_loop_numpy, make_plan
from mindvideo.errors import MindVideoError

STEPS = [25, 50]  # full runs at the step counts the README names


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("guidance_scale", [1.0, 12.5])
@pytest.mark.parametrize("name", [*SCHEDULERS, *VARIANTS])
def test_loop_matches_diffusers_step(sampler, name, guidance_scale, steps):
    factory, eta = {**SCHEDULERS, **VARIANTS}[name]
    plan = make_plan(factory(), steps, eta=eta)
    assert len(plan.timesteps) == steps
    latents, cond, noise = make_inputs(plan.init_noise_sigma, guidance_scale, steps)
    expected = diffusers_loop(factory(), steps, latents, LinearDenoiser(), cond, guidance_scale, eta, noise)
    denoise = LinearDenoiser()
    out = sampler.run_loop(
        denoise, plan, latents, cond, guidance_scale=guidance_scale, variance_noise=noise if plan.stochastic else None
    )
    assert out.dtype == np.float32 and out.shape == SHAPE
    assert relative_error(out, expected) <= 1e-6
    assert len(denoise.calls) == steps


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_c_loop_equals_python_twin_bitwise(name, steps):
    """Same float32 operations in the same order (the C build disables FMA contraction): identical bits."""
    c_host_loop()  # fails under CI when the C loop did not build
    factory, eta = SCHEDULERS[name]
    plan = make_plan(factory(), steps, eta=eta)
    latents, cond, noise = make_inputs(plan.init_noise_sigma, 12.5, steps)
    c, py = (
        host_loop.IMPLEMENTATIONS[k].run_loop(
            LinearDenoiser(), plan, latents, cond, guidance_scale=12.5, variance_noise=noise
        )
        for k in ("c", "python")
    )
    np.testing.assert_array_equal(c, py)


def test_denoiser_sees_scaled_input_timesteps_and_guided_rows(sampler):
    factory, _ = SCHEDULERS["euler"]
    plan = make_plan(factory(), 5)
    latents, cond, _ = make_inputs(plan.init_noise_sigma, 7.5, 5)
    denoise = LinearDenoiser()
    sampler.run_loop(denoise, plan, latents, cond, guidance_scale=7.5)
    shapes, ts, first_max = zip(*denoise.calls)
    assert shapes == ((2 * SHAPE[0], *SHAPE[1:]),) * 5  # [negative; positive]
    assert list(ts) == plan.timesteps.tolist() and all(isinstance(t, float) for t in ts)
    assert first_max[0] == pytest.approx(np.abs(latents).max() * plan.input_scale[0], rel=1e-6)  # x/√(σ²+1)


def test_latents_untouched_callback_sees_every_step(sampler):
    plan = make_plan(SCHEDULERS["dpmpp_2m"][0](), 6)
    latents, cond, _ = make_inputs(plan.init_noise_sigma, 1.0, 6)
    before = latents.copy()
    seen = []
    out = sampler.run_loop(
        LinearDenoiser(), plan, latents, cond, callback=lambda i, t, x: seen.append((i, t, x.copy()))
    )
    np.testing.assert_array_equal(latents, before)
    assert [(i, t) for i, t, _ in seen] == list(enumerate(plan.timesteps.tolist()))
    np.testing.assert_array_equal(seen[-1][2], out)
    assert out is not latents and sys.getrefcount(out) == 2  # only `out` (and getrefcount's argument) hold it


def test_exceptions_propagate_without_leaks(sampler):
    plan = make_plan(SCHEDULERS["ddim"][0](), 4)
    latents, cond, _ = make_inputs(plan.init_noise_sigma, 1.0, 4)
    kept: list[np.ndarray] = []

    def failing(x, t, c):
        kept.append(x)
        if len(kept) == 3:
            raise KeyError("backend fell over")
        return np.zeros_like(x)

    with pytest.raises(KeyError, match="backend fell over"):
        sampler.run_loop(failing, plan, latents, cond)
    with pytest.raises(ZeroDivisionError):
        sampler.run_loop(LinearDenoiser(), plan, latents, cond, callback=lambda i, t, x: 1 / 0)
    gc.collect()
    refs = sys.getrefcount(kept[0])  # before any assert: pytest's assert rewriting keeps operands alive
    assert all(x is kept[0] for x in kept)  # one model-input buffer, reused every step
    assert refs == 4  # kept[0..2] + getrefcount's argument: the loop let go of its own
    assert sys.getrefcount(latents) == 2 and sys.getrefcount(cond) == 2


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("float64 latents", "expected latents as a C-contiguous float32 array; found buffer format 'd'"),
        ("strided latents", "expected latents as a C-contiguous float32 array; found a non-contiguous view"),
        ("0-d latents", "expected non-empty latents"),
        ("float64 eps", "expected denoise output as a C-contiguous float32 array; found buffer format 'd'"),
        ("torch eps", "expected denoise output as a C-contiguous float32 array; found Tensor \\(no buffer"),
        ("unguided eps for guided run", "expected denoise output of shape \\(4, 4, 3, 8, 8\\); found shape \\(2, 4,"),
        ("no variance_noise", "expected step_noise or variance_noise for a stochastic plan"),
        (
            "bad variance_noise",
            "expected variance_noise\\(step\\) of shape \\(2, 4, 3, 8, 8\\); found shape \\(2, 4\\);",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(sampler, case, match):
    plan = make_plan(SCHEDULERS["ddim_eta" if "variance" in case else "ddim"][0](), 3, eta=0.5 * ("variance" in case))
    latents, cond, _ = make_inputs(1.0, 1.0, 3)
    denoise, kwargs = LinearDenoiser(), {}
    if case == "float64 latents":
        latents = latents.astype(np.float64)
    elif case == "strided latents":
        latents = np.concatenate([latents, latents], axis=-1)[..., ::2]
    elif case == "0-d latents":
        latents = np.float32(1.0).reshape(())
    elif case == "float64 eps":
        denoise = lambda x, t, c: np.zeros(x.shape)
    elif case == "torch eps":
        denoise = lambda x, t, c: torch.zeros(x.shape)
    elif case == "unguided eps for guided run":
        denoise, kwargs = (lambda x, t, c: np.zeros(SHAPE, np.float32)), {"guidance_scale": 3.0}
    elif case == "bad variance_noise":
        kwargs = {"variance_noise": lambda step: np.zeros((2, 4), np.float32)}
    with pytest.raises(MindVideoError, match=match):
        sampler.run_loop(denoise, plan, latents, cond, **kwargs)


def test_falls_back_to_the_twin_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mindvideo.engine._host_loop", None)  # "import" now fails as if never built
    if hasattr(engine_package, "_host_loop"):
        monkeypatch.delattr(engine_package, "_host_loop")
    try:
        with caplog.at_level(logging.WARNING, logger="mindvideo.engine.host_loop"):
            fallback = importlib.reload(host_loop)
        assert fallback.implementation == "python"
        assert fallback.run_loop is host_loop_numpy.run_loop and fallback.fused_update is host_loop_numpy.fused_update
        assert len([r for r in caplog.records if "numpy twin" in r.getMessage()]) == 1
        with pytest.raises(MindVideoError, match="expected the C sampling loop to be built"):
            fallback.get_host_loop("c")
    finally:
        monkeypatch.undo()
        importlib.reload(host_loop)
    assert host_loop.get_host_loop("python") is host_loop_numpy
