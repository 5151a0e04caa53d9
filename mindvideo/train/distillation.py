"""The maths of the two distillations behind the few-step student (:mod:`mindvideo.train.stages.distill`).

* **Guidance distillation** (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023, §4.1 stage one):
  a student that takes the guidance scale g as an input learns, in one pass, the guided prediction of the frozen
  teacher ``ε̂ = ε_neg + g·(ε_pos − ε_neg)`` (two passes): ``L = ‖ε_s(x_t, t, c_pos, g) − ε̂(x_t, t, g)‖²``.
* **Latent consistency distillation** (Luo et al., "Latent Consistency Models", arXiv 2310.04378, Algorithm 1): a
  skipping-step DDIM solver on the guided teacher goes from ``t_{n+k}`` to ``t_n`` (``k = T / N`` for an N-step DDIM
  grid); the online student at ``t_{n+k}`` and an EMA target at ``t_n`` must agree on the consistency function
  ``f(x, t) = c_skip(t)·x + c_out(t)·x̂₀(x, t)`` (their eq. 9, with LCMScheduler's boundary scalings, so training
  and the 4-step sampler use the same parameterisation).

Every function works on latent videos ``(B, C, F, h, w)`` and per-sample timesteps ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Teacher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, …) broadcastable against ``like``, in fp32."""
    return values.float().reshape(-1, *([1] * (like.ndim - 1)))


def guided_eps(
    teacher: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    negative: torch.Tensor | None,
    g: torch.Tensor,
) -> torch.Tensor:
    """The teacher's guided noise prediction at guidance scale ``g`` (B,).

    A plain teacher runs one doubled batch, [negative; positive] (MinD-Video's adversarial guidance, eq. of
    :func:`mindvideo.sampling.guided_sample`); a guidance-distilled teacher (``guidance_embedding``) runs one pass
    with only the positive condition and g as an input (``negative`` unused)."""
    if teacher.config.guidance_embedding:
        return teacher(x, t, cond, guidance=g).float()
    neg = negative.expand_as(cond) if negative.shape[0] == 1 else negative
    eps_neg, eps_pos = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([neg, cond])).float().chunk(2)
    return eps_neg + per_sample(g, eps_pos) * (eps_pos - eps_neg)


def skip_timesteps(num_train_timesteps: int, ddim_steps: int) -> torch.Tensor:
    """The N-step DDIM grid LCM distils on, ascending: ``t_n = (n+1)·k − 1`` with ``k = T / N`` (T = 1000, N = 50:
    19, 39, …, 999 — the grid ``LCMScheduler`` draws its inference timesteps from, ``original_inference_steps``)."""
    k = num_train_timesteps // ddim_steps
    return torch.arange(1, ddim_steps + 1) * k - 1


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t per sample; t < 0 (the step below the grid's lowest timestep) reads ᾱ_0, as LCM's DDIM solver does."""
    return per_sample(alphas_cumprod.to(like.device)[t.clamp(min=0)], like)


def predicted_x0(alphas_cumprod: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε-parameterisation: ``x̂₀ = (x − √(1−ᾱ_t)·ε) / √ᾱ_t``."""
    a = alpha_bar(alphas_cumprod, t, x)
    return (x.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()


def ddim_step(
    alphas_cumprod: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from ``t`` to ``t_prev``: ``√ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε`` (LCM's Ψ)."""
    a_prev = alpha_bar(alphas_cumprod, t_prev, x)
    return a_prev.sqrt() * predicted_x0(alphas_cumprod, x, eps, t) + (1 - a_prev).sqrt() * eps.float()


def consistency_output(lcm_scheduler, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``f(x, t) = c_skip(t)·x + c_out(t)·x̂₀`` with LCMScheduler's scalings (σ_data = 0.5, timestep × 10), so that
    ``f(x, 0) = x`` (the boundary condition) and the sampler's ``denoised`` is exactly this function."""
    c_skip, c_out = lcm_scheduler.get_scalings_for_boundary_condition_discrete(t.clamp(min=0).float())
    x0 = predicted_x0(lcm_scheduler.alphas_cumprod, x, eps, t)
    return per_sample(c_skip, x) * x.float() + per_sample(c_out, x) * x0


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    """LCM's distance d: pseudo-Huber ``√((p − q)² + c²) − c`` (per element, mean) or MSE."""
    if kind == "huber":
        return (torch.sqrt((pred.float() - target.float()) ** 2 + huber_c**2) - huber_c).mean()
    return F.mse_loss(pred.float(), target.float())
