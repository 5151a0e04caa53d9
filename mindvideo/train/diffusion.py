"""What the UNet stages share: latent caching, the diffusion loss, trainable-layer selection, sampling for
validation.

* Latents: every training clip is encoded once by the frozen VAE; the posterior mean and std are cached
  ``(N, 4, F, h, w)`` and a fresh latent ``mean + std·ε`` is drawn per step (as ``latent_dist.sample()`` would).
* Loss: DDPM's simplified objective (Ho et al. 2020, eq. 14): ``‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c)‖²`` with t
  uniform over the 1000 training steps and SD-1.5's scaled-linear schedule (``v_prediction`` schedulers get the
  velocity target), optionally Min-SNR-γ weighted.
* Trainable layers: named groups (``attention`` = self-, cross- and temporal attention, as MinD-Video tunes) or
  any parameter-name substrings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mindvideo.checkpoint import SCHEDULER_CONFIG, load_unet, load_vae
from mindvideo.errors import MindVideoError
from mindvideo.models import VideoUNet, VideoUNetConfig
from mindvideo.train.checkpointing import resolve_component
from mindvideo.train.data import StepRandom

log = logging.getLogger(__name__)

LAYER_GROUPS = {
    "all": ("",),
    "attention": ("attn1.", "attn2.", "attn_temp.", "norm_temp."),
    "self_attention": ("attn1.",),
    "cross_attention": ("attn2.",),
    "temporal": ("attn_temp.", "norm_temp."),
}


def trainable_patterns(names: tuple[str, ...]) -> tuple[str, ...]:
    """Group names expanded to parameter-name substrings (other entries are substrings already)."""
    out: list[str] = []
    for name in names:
        out.extend(LAYER_GROUPS.get(name, (name,)))
    return tuple(out)


def select_trainable(unet: nn.Module, names: tuple[str, ...]) -> int:
    """Freeze the UNet except the parameters matched by ``names``; returns the trainable count."""
    patterns = trainable_patterns(names)
    count = 0
    for name, p in unet.named_parameters():
        p.requires_grad_(any(s in name for s in patterns))
        count += p.numel() if p.requires_grad else 0
    if count == 0:
        raise MindVideoError(
            "expected the trainable-layer patterns to match some UNet parameters",
            f"none matched {list(names)}",
            f"use groups {sorted(LAYER_GROUPS)} or parameter-name substrings",
        )
    return count


# --------------------------------------------------------------------------------------------------- networks


def load_stage_vae(path: str):
    """The frozen VAE of a ``vae`` stage output or any diffusers ``AutoencoderKL`` folder (e.g. ``SD-1.5/vae``)."""
    vae = load_vae(resolve_component(path, "vae", ("vae",), "vae"))
    return vae.requires_grad_(False).eval()


def build_unet(config: VideoUNetConfig | None, init: str | None, stages: tuple[str, ...]) -> VideoUNet:
    """A UNet from ``init`` (an earlier stage's output, a diffusers SD UNet folder — inflated — or ours), else a
    fresh one from ``config``."""
    if init:
        return load_unet(resolve_component(init, "unet", stages, "init_unet"))
    if config is None:
        raise MindVideoError("expected init_unet (a UNet folder) or a unet config", "neither", "set one of them")
    return VideoUNet(config)


def check_shapes(unet: VideoUNet, vae, cond_dim: int, what: str) -> None:
    """The UNet must take the VAE's latents and the condition's width."""
    checks = [
        (
            unet.config.in_channels == vae.config.latent_channels,
            "UNet in_channels = VAE latent_channels",
            f"{unet.config.in_channels} vs {vae.config.latent_channels}",
        ),
        (
            unet.config.cross_attention_dim == cond_dim,
            f"UNet cross_attention_dim = the {what} width",
            f"{unet.config.cross_attention_dim} vs {cond_dim}",
        ),
    ]
    for ok, expected, found in checks:
        if not ok:
            raise MindVideoError(f"expected {expected}", found, "make the configs of the stages agree")


def noise_scheduler():
    """diffusers ``DDPMScheduler`` with SD-1.5's settings (those the exported checkpoints ship for sampling)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")})


def vae_scaling(vae) -> float:
    return float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)


@torch.no_grad()
def encode_videos(vae, video: np.ndarray, device: torch.device, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips (N, F, H, W, 3) → posterior mean and std (N, C, F, h, w) float32, unscaled."""
    n, f = video.shape[:2]
    flat = video.reshape(n * f, *video.shape[2:])
    means, stds = [], []
    for s in range(0, len(flat), batch):
        x = torch.from_numpy(np.array(flat[s : s + batch])).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())

    def clips(parts: list[torch.Tensor]) -> np.ndarray:
        x = torch.cat(parts)
        return x.reshape(n, f, *x.shape[1:]).transpose(1, 2).contiguous().numpy()  # (N, C, F, h, w)

    return clips(means), clips(stds)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int = 32) -> np.ndarray:
    """Scaled latents (B, C, F, h, w) → uint8 video (B, F, H, W, 3) (the pipeline's decode)."""
    b, c, f, h, w = latents.shape
    flat = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae_scaling(vae)
    dtype = next(vae.parameters()).dtype
    frames = torch.cat([vae.decode(flat[i : i + chunk].to(dtype)).sample.float() for i in range(0, len(flat), chunk)])
    video = ((frames / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return video.reshape(b, f, 3, *video.shape[-2:]).permute(0, 1, 3, 4, 2).cpu().numpy()


# --------------------------------------------------------------------------------------------------- loss


def sample_latents(batch: dict[str, torch.Tensor], rng: StepRandom, scaling: float, frames: int = 0) -> torch.Tensor:
    """One posterior sample per clip from the cached mean/std, scaled as SD expects: (b, C, F, h, w).

    ``frames`` > 0 keeps a random run of that many consecutive frames per clip (the networks do not depend on the
    frame count, so training on shorter runs sees more clips per second and still samples full clips)."""
    mean, std = batch["latent_mean"], batch["latent_std"]
    latents = (mean + std * rng.randn("posterior", *mean.shape[1:])) * scaling
    total = latents.shape[2]
    if not 0 < frames < total:
        return latents
    start = rng.randint("frames", total - frames + 1)  # (b,)
    index = (start[:, None] + torch.arange(frames, device=start.device)).to(latents.device)  # (b, frames)
    b, c, _, h, w = latents.shape
    index = index[:, None, :, None, None].expand(b, c, frames, h, w)
    return latents.gather(2, index)  # (b, C, frames, h, w)


def diffusion_loss(
    unet: nn.Module, scheduler, latents: torch.Tensor, cond: torch.Tensor, rng: StepRandom, snr_gamma: float = 0.0
) -> torch.Tensor:
    """DDPM ε-prediction (or v-prediction) MSE for clean latents (B, C, F, h, w) and conditions (B, L, D).

    ``snr_gamma`` > 0 weights each sample by min(SNR_t, γ) / SNR_t (ε) or min(SNR_t, γ) / (SNR_t + 1) (v): the
    Min-SNR-γ strategy (Hang et al. 2023, eq. 6–7), which stops the many easy low-noise steps from dominating and
    converges several times faster."""
    noise = rng.randn("noise", *latents.shape[1:])
    t = rng.randint("timestep", scheduler.config.num_train_timesteps)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, cond)
    epsilon = scheduler.config.prediction_type == "epsilon"
    target = noise if epsilon else scheduler.get_velocity(latents, noise, t)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    if snr_gamma > 0:
        alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
        snr = alpha_bar / (1.0 - alpha_bar)
        per_sample = per_sample * snr.clamp(max=snr_gamma) / (snr if epsilon else snr + 1.0)
    return per_sample.mean()


@torch.no_grad()
def sample_videos(
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    negative: torch.Tensor,
    shape: tuple[int, ...],
    *,
    steps: int,
    guidance: float,
    seed: int,
) -> torch.Tensor:
    """DDIM with (adversarial) classifier-free guidance, the inference pipeline's loop: latents (B, C, F, h, w)."""
    from mindvideo.sampling import guided_sample, initial_latents, make_scheduler

    scheduler = make_scheduler(SCHEDULER_CONFIG, "ddim")
    latents = initial_latents(shape, seed, float(scheduler.init_noise_sigma)).to(cond.device)
    stacked = torch.cat([negative.expand_as(cond), cond]) if guidance > 1 else cond
    return guided_sample(denoise, scheduler, latents, stacked, guidance, steps)


def describe_unet(unet: VideoUNet) -> dict[str, Any]:
    total = sum(p.numel() for p in unet.parameters())
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable, "config": unet.config.to_dict()}
