"""The sampling loop in numpy: the pure-Python twin of the C extension ``mindvideo.engine._host_loop``.

Same functions, signatures, checks, error messages and arithmetic (float32 buffers, float64 maths, one rounding per
stored value, in the same order), so either stands in for the other; :mod:`mindvideo.engine.host_loop` picks one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError

from .schedule import COEFFICIENT_NAMES, SamplingPlan, StepCoefficients

Denoise = Callable[[np.ndarray, Any, Any], Any]
FLOAT32_FORMATS = ("f", "=f", "@f", "<f" if sys.byteorder == "little" else ">f")  # native float32 only
FIX_FLOAT32 = "pass np.ascontiguousarray(value, dtype=np.float32)"
FIX_EPS_SHAPE = "denoise(x, t, cond) must return eps shaped like x; with guidance_scale > 1, cond stacks 2B rows"
FIX_STEP_NOISE = "pass step_noise=mindvideo.sampling.step_noise(generator, latents.shape, steps).numpy()"
NOISE_NAME = "variance_noise(step)"


def check_float32(
    obj: Any,
    name: str,
    shape: tuple[int, ...] | None = None,
    *,
    writable: bool = False,
    fix: str = "match the latents' shape",
) -> np.ndarray:
    """``obj`` as a float32 array after checking what the C extension checks (buffer protocol, format ``'f'``,
    C-contiguous, writable if asked, ``shape`` if given). Shares memory with ``obj``."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise MindVideoError(
            f"expected {name} as a C-contiguous float32 array",
            f"{type(obj).__name__} (no buffer interface)",
            FIX_FLOAT32,
        ) from None
    if view.format not in FLOAT32_FORMATS or view.itemsize != 4:
        raise MindVideoError(
            f"expected {name} as a C-contiguous float32 array", f"buffer format {view.format!r}", FIX_FLOAT32
        )
    if not view.c_contiguous:
        raise MindVideoError(f"expected {name} as a C-contiguous float32 array", "a non-contiguous view", FIX_FLOAT32)
    if writable and view.readonly:
        raise MindVideoError(
            f"expected {name} as a writable float32 array",
            "a read-only buffer",
            "pass a writable copy (np.array(value))",
        )
    if shape is not None and tuple(view.shape) != tuple(shape):
        raise MindVideoError(f"expected {name} of shape {tuple(shape)}", f"shape {tuple(view.shape)}", fix)
    return np.asarray(view)


def as_coefficients(coefficients: Sequence[float]) -> StepCoefficients:
    """A :class:`StepCoefficients` from any sequence of 7 numbers (a plan row, a tuple)."""
    values = list(coefficients)
    if len(values) != len(COEFFICIENT_NAMES):
        raise MindVideoError(
            f"expected {len(COEFFICIENT_NAMES)} step coefficients {COEFFICIENT_NAMES}",
            f"{len(values)} values",
            "pass plan.step(i)",
        )
    return StepCoefficients(*map(float, values))


def fused_update(
    x: np.ndarray,
    eps_pos: np.ndarray,
    eps_neg: np.ndarray | None,
    guidance_scale: float,
    coefficients: Sequence[float],
    state: np.ndarray | None = None,
    noise: np.ndarray | None = None,
) -> None:
    """One guided sampler step, in place on ``x`` (and ``state``)::

        m = eps_neg + g·(eps_pos − eps_neg)      (m = eps_pos when eps_neg is None)
        d = p·x + q·m;   x ← a·x + b·m + c·d + e·state + n·noise;   state ← d

    Buffers are float32; the arithmetic is float64, rounded once into ``x`` and ``state``. The ``d``/``state``
    terms run only when the step needs them (``coefficients.stateful``), the noise term only when ``n ≠ 0``;
    ``state`` and ``noise`` are then required. All arrays share ``x``'s shape.
    """
    k = as_coefficients(coefficients)
    x, pos, neg, state, noise = _check_update(k, x, eps_pos, eps_neg, state, noise)
    m = pos.astype(np.float64)
    if neg is not None:
        m = neg + guidance_scale * (m - neg)  # float32 neg promotes to float64 against m
    x64 = x.astype(np.float64)
    y = k.a * x64 + k.b * m
    if k.stateful:
        d = k.p * x64 + k.q * m
        y += k.c * d
        y += k.e * state.astype(np.float64)
        state[...] = d
    if k.n != 0.0:
        y += k.n * noise.astype(np.float64)
    x[...] = y


def _check_update(k: StepCoefficients, x: Any, eps_pos: Any, eps_neg: Any, state: Any, noise: Any) -> tuple:
    """Every argument of :func:`fused_update` checked (in the C extension's order) before anything is written."""
    x = check_float32(x, "x", writable=True)
    pos = check_float32(eps_pos, "eps_pos", x.shape)
    neg = None if eps_neg is None else check_float32(eps_neg, "eps_neg", x.shape)
    if k.stateful:
        if state is None:
            raise MindVideoError(
                "expected a state buffer for a multistep step",
                "state=None",
                "pass np.zeros_like(x) and keep it across steps",
            )
        state = check_float32(state, "state", x.shape, writable=True)
    if k.n != 0.0:
        if noise is None:
            raise MindVideoError(
                "expected a noise draw for a stochastic step (DDIM eta > 0)",
                "noise=None",
                "pass standard normal float32 noise shaped like x",
            )
        noise = check_float32(noise, "noise", x.shape)
    return x, pos, neg, state, noise


def run_loop(
    denoise: Denoise,
    plan: SamplingPlan,
    latents: np.ndarray,
    cond: Any,
    *,
    guidance_scale: float = 1.0,
    variance_noise: Callable[[int], np.ndarray] | None = None,
    callback: Callable[[int, Any, np.ndarray], Any] | None = None,
    step_noise: np.ndarray | None = None,
    single_pass: bool = False,
) -> np.ndarray:
    """Run every step of ``plan`` from ``latents`` (B, ...) float32, already multiplied by
    ``plan.init_noise_sigma``; returns new denoised latents (``latents`` is not modified).

    Stochastic steps read their standard normal draw (B, ...) from ``step_noise[step]`` (a (K, B, ...) float32
    buffer, K ≥ ``plan.noise_rows``) or from ``variance_noise(step)``; one of them is required then.
    ``single_pass``: B model rows and no guidance mix whatever ``guidance_scale`` (a student; g is bound into
    ``denoise``). ``callback(step, t, x)`` runs after each update with the live latents (copy them to keep them); an
    exception raised there or in ``denoise`` stops the loop and propagates.

    ``denoise`` is the one seam every backend implements::

        eps = denoise(x_in, t, cond)     x_in (rows, ...) float32, rows = 2B (guided: [negative; positive]) or B

    ``x_in`` is the scaled model input (``scale_model_input``), written into one buffer that is reused every step (do
    not keep it); ``t`` is the step's timestep as a Python number; ``cond`` is passed through untouched. Guidance is on
    when ``guidance_scale > 1`` (as in diffusers pipelines): ``cond`` then stacks the negative and positive conditions
    and ``eps`` comes back with 2B rows in the same order. A student binds g into ``denoise``
    (``functools.partial(backend.denoise, guidance=g)``). LCM's ``step_noise`` has K = S − 1 rows
    (:func:`mindvideo.sampling.step_noise`).
    """
    x = np.array(check_float32(latents, "latents"))
    noises = _check_run(x, plan, variance_noise, step_noise)
    guided = guidance_scale > 1.0 and not single_pass
    batch = x.shape[0]
    x_in = np.empty((2 * batch if guided else batch, *x.shape[1:]), np.float32)
    state = np.zeros_like(x) if plan.stateful else None
    for i, t in enumerate(plan.timesteps.tolist()):
        np.multiply(x, plan.input_scale[i], out=x_in[:batch], dtype=np.float64, casting="same_kind")
        if guided:
            x_in[batch:] = x_in[:batch]
        eps = check_float32(denoise(x_in, t, cond), "denoise output", x_in.shape, fix=FIX_EPS_SHAPE)
        k = plan.step(i)
        noise = None
        if k.n != 0.0:
            noise = noises[i] if noises is not None else check_float32(variance_noise(i), NOISE_NAME, x.shape)
        if guided:
            fused_update(x, eps[batch:], eps[:batch], guidance_scale, k, state, noise)
        else:
            fused_update(x, eps, None, 1.0, k, state, noise)
        if callback is not None:
            callback(i, t, x)
    return x


def _check_run(
    x: np.ndarray, plan: SamplingPlan, variance_noise: Callable[[int], np.ndarray] | None, step_noise: Any
) -> np.ndarray | None:
    """The run's arguments checked (in the C extension's order); returns the ``step_noise`` view, if any."""
    if x.ndim < 1 or x.size == 0:
        raise MindVideoError(
            "expected non-empty latents (B, C, F, h, w)",
            f"shape {x.shape}",
            "pass the initial noise times plan.init_noise_sigma",
        )
    if step_noise is not None and variance_noise is not None:
        raise MindVideoError(
            "expected one noise source, step_noise or variance_noise", "both", "pass the precomputed step_noise only"
        )
    if step_noise is not None:
        noises = check_float32(step_noise, "step_noise")
        rows = plan.noise_rows
        if noises.ndim != x.ndim + 1 or noises.shape[1:] != x.shape or noises.shape[0] < rows:
            raise MindVideoError(
                f"expected step_noise of shape (K,) + {x.shape} with K >= {rows}",
                f"shape {noises.shape}",
                FIX_STEP_NOISE,
            )
        return noises
    if plan.stochastic and variance_noise is None:
        raise MindVideoError(
            "expected step_noise or variance_noise for a stochastic plan (DDIM eta > 0, LCM)",
            "step_noise=None, variance_noise=None",
            FIX_STEP_NOISE,
        )
    return None
