"""Sampling plans: a diffusers scheduler unrolled, once, into the per-step coefficients of one fused update.

Each supported step (DDIM, DPM-Solver++(2M), Euler, LCM) is linear in the latents, the guided model output, the
previous data prediction and an optional noise draw, so an S-step run reduces to a small table computed up front in
float64 (:func:`make_plan`); the update (C, numpy, torch or Triton) applies it to float32 buffers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mindvideo.errors import MindVideoError

SAMPLERS = ("ddim", "dpmpp_2m", "euler", "lcm")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_CLASSES = {
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "EulerDiscreteScheduler": "euler",
    "LCMScheduler": "lcm",
}


class StepCoefficients(NamedTuple):
    """One step of ``x' = a·x + b·m + c·d + e·d_prev + n·z`` with ``d = p·x + q·m`` (see the module docstring)."""

    a: float
    b: float
    c: float
    e: float
    p: float
    q: float
    n: float

    @property
    def stateful(self) -> bool:
        """Whether the step reads or writes the data-prediction buffer ``d``."""
        return any(v != 0.0 for v in (self.c, self.e, self.p, self.q))


COEFFICIENT_NAMES = StepCoefficients._fields


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """A scheduler unrolled for ``S`` steps; read-only arrays, safe to share between threads and runs.

    ``timesteps`` (S,): what the denoiser receives as ``t`` (the scheduler's dtype: int64 for DDIM/DPM, float32 for
    Euler). ``input_scale`` (S,): ``scale_model_input`` as a factor (Euler: ``1/√(σ²+1)``, else 1).
    ``coefficients`` (S, 7) float64: one :class:`StepCoefficients` row per step. ``init_noise_sigma``: the factor the
    initial unit Gaussian latents are multiplied by before the loop (as diffusers' ``prepare_latents`` does).
    """

    sampler: str
    timesteps: np.ndarray
    input_scale: np.ndarray
    coefficients: np.ndarray
    init_noise_sigma: float
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        steps = len(self.timesteps)
        coefficients = np.ascontiguousarray(self.coefficients, dtype=np.float64)
        input_scale = np.ascontiguousarray(self.input_scale, dtype=np.float64)
        if steps < 1 or coefficients.shape != (steps, len(COEFFICIENT_NAMES)) or input_scale.shape != (steps,):
            raise ValueError(
                f"inconsistent plan: {steps} timesteps, coefficients {coefficients.shape}, "
                f"input_scale {input_scale.shape}"
            )
        if not (np.isfinite(coefficients).all() and np.isfinite(input_scale).all()):
            raise MindVideoError(
                f"expected finite {self.sampler} coefficients",
                "inf/NaN from the scheduler's sigmas",
                "check the scheduler config (final_sigmas_type, solver order, beta schedule)",
            )
        timesteps = np.array(self.timesteps)  # a private copy
        for array in (timesteps, input_scale, coefficients):
            array.setflags(write=False)
        object.__setattr__(self, "timesteps", timesteps)
        object.__setattr__(self, "input_scale", input_scale)
        object.__setattr__(self, "coefficients", coefficients)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def stateful(self) -> bool:
        """Whether some step needs the data-prediction buffer (multistep solvers)."""
        return bool(np.any(self.coefficients[:, [2, 3, 4, 5]] != 0.0))

    @property
    def stochastic(self) -> bool:
        """Whether some step adds noise (DDIM with η > 0, LCM with more than one step) and so needs noise draws."""
        return bool(np.any(self.coefficients[:, 6] != 0.0))

    @property
    def noise_rows(self) -> int:
        """How many per-step noise draws a run reads: 1 + the index of the last noisy step (0 if none). Step ``i``
        reads row ``i`` of a ``step_noise`` buffer (LCM: ``S − 1`` rows, the last step adds none)."""
        noisy = np.flatnonzero(self.coefficients[:, 6] != 0.0)
        return int(noisy[-1]) + 1 if len(noisy) else 0

    def step(self, i: int) -> StepCoefficients:
        """The coefficients of step ``i`` as Python floats."""
        return StepCoefficients(*self.coefficients[i].tolist())

    def __repr__(self) -> str:
        return (
            f"SamplingPlan({self.sampler}, {self.num_steps} steps, t={self.timesteps[0]}…{self.timesteps[-1]}, "
            f"init_noise_sigma={self.init_noise_sigma:.4g}, prediction_type={self.prediction_type!r})"
        )


# --------------------------------------------------------------------------------------------------- building


def make_plan(scheduler: Any, num_steps: int, *, eta: float = 0.0) -> SamplingPlan:
    """Unroll ``scheduler`` (a diffusers DDIM / DPM-Solver++ / Euler / LCM scheduler, or its config dict with
    ``_class_name``) for ``num_steps`` steps. ``eta`` is DDIM's stochasticity η (0 = deterministic DDIM).

    The caller's scheduler is not touched: a fresh one is built from its config and ``set_timesteps`` is called
    on that.

    Each supported sampler step is linear in the latents ``x``, the guided model output ``m``, the previous data
    prediction and an optional noise draw ``z``, so an S-step run reduces to a small table computed up front::

        m  = m_neg + g·(m_pos − m_neg)                    classifier-free guidance (Ho & Salimans 2022, eq. 6)
        d  = p·x + q·m                                    data prediction x̂₀ (kept by multistep solvers)
        x' = a·x + b·m + c·d + e·d_prev + n·z             then d_prev ← d

    ========================  ==============================================================================
    sampler                   coefficients (all others zero)
    ========================  ==============================================================================
    DDIM (η ≥ 0)              ``a, b`` from DDIM eq. 12, ``n = σ_t(η)`` from eq. 16 (Song et al. 2021)
    DPM-Solver++(2M)          ``p, q`` (x̂₀ of the model output), ``a = σ_t/σ_s``, ``c, e`` from Lu et al. 2022
                              (DPM-Solver++ Alg. 2, multistep second order; first order at the ends)
    Euler                     ``a = 1, b = σ_{i+1} − σ_i`` for ε-prediction (Karras et al. 2022, Alg. 1, no churn)
    LCM multistep             ``a, b`` from the consistency function f = c_skip·x + c_out·x̂₀ re-noised to the
                              next timestep, ``n = √(1 − ᾱ_next)`` (Luo et al. 2023, Alg. 3); ``n = 0`` and
                              ``a·x + b·m = f`` at the last step
    ========================  ==============================================================================

    Everything is computed in float64 from the scheduler's own arrays after ``set_timesteps`` (``alphas_cumprod``,
    ``final_alpha_cumprod``, ``sigmas``, ``timesteps``, LCM's boundary scalings), so the plan follows whatever spacing,
    Karras sigmas or final-sigma setting the config asks for. The update (C, numpy, torch or Triton) reads and writes
    float32 buffers and evaluates each element in float64 with these coefficients, rounding once per stored value.
    """
    scheduler = _fresh_scheduler(scheduler)
    sampler = _CLASSES[type(scheduler).__name__]
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise MindVideoError("expected a positive number of sampling steps", repr(num_steps), "pass e.g. 25")
    if eta != 0.0 and sampler != "ddim":
        raise MindVideoError(
            "expected eta = 0 for a deterministic sampler",
            f"eta={eta} with {sampler}",
            "use DDIM for eta > 0, or drop eta",
        )
    if not 0.0 <= eta <= 1.0:
        raise MindVideoError("expected DDIM eta in [0, 1]", repr(eta), "0 is DDIM, 1 is DDPM-like")
    config = scheduler.config
    prediction_type = config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise MindVideoError(
            f"expected a prediction_type among {PREDICTION_TYPES}",
            repr(prediction_type),
            "the fused loop supports epsilon, v_prediction and sample",
        )
    if config.get("thresholding", False) or config.get("clip_sample", False):
        raise MindVideoError(
            "expected a scheduler without x̂₀ clipping or dynamic thresholding (not linear)",
            f"clip_sample={config.get('clip_sample')}, thresholding={config.get('thresholding')}",
            "build it with clip_sample=False, thresholding=False (SD-1.5's setting)",
        )
    _set_timesteps(scheduler, sampler, int(num_steps))
    timesteps = scheduler.timesteps.cpu().numpy()
    if sampler == "ddim":
        scale, coefficients = _ddim(scheduler, timesteps, eta, prediction_type)
    elif sampler == "lcm":
        scale, coefficients = _lcm(scheduler, timesteps, prediction_type)
    elif sampler == "dpmpp_2m":
        scale, coefficients = _dpmpp_2m(scheduler, prediction_type)
    else:
        scale, coefficients = _euler(scheduler, prediction_type)
    return SamplingPlan(sampler, timesteps, scale, coefficients, float(scheduler.init_noise_sigma), prediction_type)


def _set_timesteps(scheduler: Any, sampler: str, num_steps: int) -> None:
    """``set_timesteps``, with LCM's limit (at most its ``original_inference_steps``) as a clear error."""
    if sampler == "lcm" and num_steps > scheduler.config.original_inference_steps:
        raise MindVideoError(
            f"expected at most {scheduler.config.original_inference_steps} LCM steps "
            "(the scheduler's original_inference_steps)",
            str(num_steps),
            "LCM samples in few steps: pass e.g. 4",
        )
    scheduler.set_timesteps(num_steps)


def _fresh_scheduler(scheduler: Any) -> Any:
    """A new scheduler of the same class and config (from an instance or a config mapping)."""
    if isinstance(scheduler, Mapping):
        name = scheduler.get("_class_name")
        if name not in _CLASSES:
            raise MindVideoError(
                f"expected a scheduler config with _class_name among {sorted(_CLASSES)}",
                repr(name),
                "build the scheduler yourself and pass it",
            )
        import diffusers

        return getattr(diffusers, name).from_config(dict(scheduler))
    name = type(scheduler).__name__
    if name not in _CLASSES or not hasattr(scheduler, "config"):
        raise MindVideoError(
            f"expected a diffusers scheduler among {sorted(_CLASSES)}",
            name,
            "convert it with e.g. DDIMScheduler.from_config(scheduler.config)",
        )
    return type(scheduler).from_config(copy.deepcopy(dict(scheduler.config)))


def _denoiser_coefficients(sigma: np.ndarray, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(c_skip, c_out)`` with x̂₀ = c_skip·x + c_out·m for latents ``x`` at noise level ``σ`` in the variance-
    exploding scale (x = x_VP·√(σ²+1)), for ε-, v- and x₀-prediction (Karras et al. 2022, Table 1)."""
    if prediction_type == "epsilon":
        return np.ones_like(sigma), -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma**2 + 1.0), -sigma / np.sqrt(sigma**2 + 1.0)
    return np.zeros_like(sigma), np.ones_like(sigma)


def _ddim(scheduler: Any, timesteps: np.ndarray, eta: float, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """DDIM (Song et al. 2021, eq. 12): x_{t−1} = √ᾱ_{t−1}·x̂₀ + √(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·z, with
    σ_t(η) = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}) (eq. 16) and diffusers' choice of t−1."""
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps.astype(np.int64) - stride
    abar = alphas_cumprod[timesteps.astype(np.int64)]
    abar_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], float(scheduler.final_alpha_cumprod))
    std = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))

    # x̂₀ = p·x + q·m and ε̂ = (x − √ᾱ·x̂₀)/√(1 − ᾱ) = ex·x + em·m, in the VP scale of DDIM's latents
    c_skip, c_out = _denoiser_coefficients(np.sqrt((1 - abar) / abar), prediction_type)
    p, q = c_skip / np.sqrt(abar), c_out
    ex, em = (1 - np.sqrt(abar) * p) / np.sqrt(1 - abar), -np.sqrt(abar) * q / np.sqrt(1 - abar)
    if prediction_type == "epsilon":  # exact: ε̂ is the model output
        ex, em = np.zeros_like(ex), np.ones_like(em)
    direction = np.sqrt(1 - abar_prev - std**2)
    coefficients = np.zeros((len(timesteps), 7))
    coefficients[:, 0] = np.sqrt(abar_prev) * p + direction * ex  # a
    coefficients[:, 1] = np.sqrt(abar_prev) * q + direction * em  # b
    coefficients[:, 6] = std  # n
    return np.ones(len(timesteps)), coefficients


def _lcm(scheduler: Any, timesteps: np.ndarray, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """LCM's multistep consistency sampling (Luo et al. 2023, Alg. 3), as diffusers' ``LCMScheduler.step``::

        f = c_skip(t)·x + c_out(t)·x̂₀(x, m)                  the consistency function (boundary conditions, eq. 9)
        x' = √ᾱ_next·f + √(1 − ᾱ_next)·z                     re-noised to the next timestep; x' = f at the last step

    ``c_skip``/``c_out`` come from the scheduler's ``get_scalings_for_boundary_condition_discrete`` (σ_data = 0.5,
    ``timestep_scaling``); x̂₀ = P·x + Q·m in the VP scale for ε-, v- and x₀-prediction. So a = A·(c_skip + c_out·P),
    b = A·c_out·Q with A = √ᾱ_next (1 at the last step), n = √(1 − ᾱ_next) (0 at the last step)."""
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()
    t = timesteps.astype(np.int64)
    abar = alphas_cumprod[t]
    nxt = np.append(t[1:], t[-1])  # diffusers: the next timestep, the current one at the last step (unused there)
    abar_next = np.where(nxt >= 0, alphas_cumprod[np.maximum(nxt, 0)], float(scheduler.final_alpha_cumprod))
    scalings = np.array([scheduler.get_scalings_for_boundary_condition_discrete(int(ti)) for ti in t], np.float64)
    c_skip, c_out = scalings[:, 0], scalings[:, 1]
    if prediction_type == "epsilon":  # x̂₀ = (x − √(1 − ᾱ)·m)/√ᾱ
        p, q = 1.0 / np.sqrt(abar), -np.sqrt(1.0 - abar) / np.sqrt(abar)
    elif prediction_type == "v_prediction":  # x̂₀ = √ᾱ·x − √(1 − ᾱ)·m
        p, q = np.sqrt(abar), -np.sqrt(1.0 - abar)
    else:  # x̂₀ = m
        p, q = np.zeros_like(abar), np.ones_like(abar)
    last = np.arange(len(t)) == len(t) - 1
    renoise = np.where(last, 1.0, np.sqrt(abar_next))
    coefficients = np.zeros((len(t), 7))
    coefficients[:, 0] = renoise * (c_skip + c_out * p)  # a
    coefficients[:, 1] = renoise * c_out * q  # b
    coefficients[:, 6] = np.where(last, 0.0, np.sqrt(1.0 - abar_next))  # n
    return np.ones(len(t)), coefficients


def _dpmpp_2m(scheduler: Any, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), with h = λ_t − λ_s, λ = log(α/σ) and r = h_{i−1}/h_i::

        x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·(x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r))               (midpoint)
        x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x̂₀_i + α_t((e^{−h} − 1)/h + 1)·(x̂₀_i − x̂₀_{i−1})/r   (heun)

    First order (x̂₀_i alone) on the first step and wherever diffusers lowers the order at the end.
    """
    config = scheduler.config
    if (
        config.algorithm_type != "dpmsolver++"
        or config.solver_order not in (1, 2)
        or config.get("use_flow_sigmas", False)
        or config.get("variance_type") is not None
    ):
        raise MindVideoError(
            "expected DPMSolverMultistepScheduler with algorithm_type='dpmsolver++', solver_order 1 or 2",
            f"algorithm_type={config.algorithm_type!r}, solver_order={config.solver_order}, "
            f"use_flow_sigmas={config.get('use_flow_sigmas')}, variance_type={config.get('variance_type')}",
            "build it with algorithm_type='dpmsolver++', solver_order=2",
        )
    sigmas = scheduler.sigmas.double().numpy()  # (S+1,) σ = √((1 − ᾱ)/ᾱ), last one 0 or σ_min
    steps = len(sigmas) - 1
    alpha = 1.0 / np.sqrt(sigmas**2 + 1.0)  # VP α_t, σ_t = σ·α_t
    with np.errstate(divide="ignore"):
        lam = -np.log(sigmas)  # λ = log α_t − log σ_t; +inf at σ = 0
    c_skip, c_out = _denoiser_coefficients(sigmas[:-1], prediction_type)
    coefficients = np.zeros((steps, 7))
    coefficients[:, 4], coefficients[:, 5] = c_skip / alpha[:-1], c_out  # p, q: x̂₀ from VP latents
    for i in range(steps):
        h = lam[i + 1] - lam[i]
        phi = -alpha[i + 1] * np.expm1(-h)  # −α_t(e^{−h} − 1) ≥ 0; equals α_t = 1 when σ_t = 0
        coefficients[i, 0] = sigmas[i + 1] * alpha[i + 1] / (sigmas[i] * alpha[i])  # a = σ_t/σ_s (VP)
        if _dpm_order(config, i, steps) == 1:
            coefficients[i, 2] = phi  # c
            continue
        r = (lam[i] - lam[i - 1]) / h
        if config.solver_type == "midpoint":
            coefficients[i, 2], coefficients[i, 3] = phi * (1 + 0.5 / r), -phi * 0.5 / r  # c, e
        else:  # heun: + α_t((e^{−h} − 1)/h + 1)·D1, D1 = (x̂₀_i − x̂₀_{i−1})/r
            k = alpha[i + 1] * (np.expm1(-h) / h + 1.0) / r
            coefficients[i, 2], coefficients[i, 3] = phi + k, -k
    return np.ones(steps), coefficients


def _dpm_order(config: Any, i: int, steps: int) -> int:
    """The solver order diffusers uses at step ``i`` (``DPMSolverMultistepScheduler.step``'s rules for order 2)."""
    lower_final = i == steps - 1 and (
        config.euler_at_final or (config.lower_order_final and steps < 15) or config.final_sigmas_type == "zero"
    )
    return 1 if config.solver_order == 1 or i == 0 or lower_final else 2


def _euler(scheduler: Any, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Euler on the probability-flow ODE dx/dσ = (x − x̂₀)/σ (Karras et al. 2022, Alg. 1 without churn):
    x_{i+1} = x_i + (σ_{i+1} − σ_i)·(x_i − x̂₀)/σ_i; the model sees x/√(σ²+1)."""
    sigmas = scheduler.sigmas.double().numpy()  # (S+1,)
    sigma, sigma_next = sigmas[:-1], sigmas[1:]
    c_skip, c_out = _denoiser_coefficients(sigma, prediction_type)
    coefficients = np.zeros((len(sigma), 7))
    coefficients[:, 0] = 1.0 + (sigma_next - sigma) * (1.0 - c_skip) / sigma  # a (exactly 1 for ε-prediction)
    coefficients[:, 1] = (sigma_next - sigma) * (-c_out / sigma)  # b (exactly σ_{i+1} − σ_i for ε-prediction)
    return 1.0 / np.sqrt(sigma**2 + 1.0), coefficients
