"""An independent implementation of the reference MinD-Video pipeline, used only as a test oracle.

It is built from diffusers' own ``UNet2DConditionModel`` (run on ``(B·F, C, H, W)``) with the reference's three
video changes bolted on from outside, the way the reference code defines them:
* sparse-causal self-attention as a diffusers attention processor (keys/values of frames f-2 and f-1, clamped);
* temporal attention after each transformer block, via a forward hook with a diffusers ``Attention`` module;
* the resnet/out GroupNorms applied to the 5-D video tensor (statistics over all frames).
The fMRI encoder is a functional forward over the reference state dict. The sampling loop follows the reference
pipeline: CPU-seeded noise × init_noise_sigma, [negative; positive] conditions, DDIM ``scheduler.step``, VAE decode
per frame with the 0.18215 scale. Nothing here imports mindvideo's models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class Clip:
    """Shared frame count for the patched modules."""

    frames = 1


class VideoGroupNorm5D(nn.Module):
    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        f = Clip.frames
        x5 = x.reshape(-1, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
        y = F.group_norm(x5, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)
        return y.permute(0, 2, 1, 3, 4).reshape(x.shape)


class SparseCausalProcessor:
    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        f = Clip.frames
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        prev1 = [max(i - 1, 0) for i in range(f)]
        prev2 = [max(i - 2, 0) for i in range(f)]

        def context(t):
            t = t.reshape(-1, f, *t.shape[1:])  # b f d c
            return torch.cat([t[:, prev2], t[:, prev1]], dim=2).reshape(-1, 2 * t.shape[2], t.shape[3])

        key, value = attn.head_to_batch_dim(context(key)), attn.head_to_batch_dim(context(value))
        probs = attn.get_attention_scores(query, key, None)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def _temporal_hook(norm_temp: nn.LayerNorm, attn_temp: Attention):
    def hook(module, args, output):
        f = Clip.frames
        bf, d, c = output.shape
        h = output.reshape(bf // f, f, d, c).permute(0, 2, 1, 3).reshape(-1, f, c)  # (b d) f c
        h = attn_temp(norm_temp(h)) + h
        return h.reshape(bf // f, d, f, c).permute(0, 2, 1, 3).reshape(bf, d, c)

    return hook


def load_oracle_unet(folder: Path) -> UNet2DConditionModel:
    cfg = json.loads((folder / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["down_block_types"] = [n.replace("3D", "2D") for n in cfg["down_block_types"]]
    cfg["up_block_types"] = [n.replace("3D", "2D") for n in cfg["up_block_types"]]
    cfg["mid_block_type"] = cfg["mid_block_type"].replace("3D", "2D")
    unet = UNet2DConditionModel.from_config(cfg)
    state = torch.load(folder / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    unet.load_state_dict({k: v for k, v in state.items() if "_temp." not in k})
    for name, module in list(unet.named_modules()):
        if isinstance(module, ResnetBlock2D):
            module.norm1, module.norm2 = VideoGroupNorm5D(module.norm1), VideoGroupNorm5D(module.norm2)
        if name.endswith("attn1"):
            module.set_processor(SparseCausalProcessor())
        if type(module).__name__ == "BasicTransformerBlock":
            dim = module.norm1.normalized_shape[0]
            heads = module.attn1.heads
            norm_temp = nn.LayerNorm(dim)
            attn_temp = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
            norm_temp.load_state_dict(
                {k.split("norm_temp.")[1]: v for k, v in state.items() if k.startswith(f"{name}.norm_temp.")}
            )
            attn_temp.load_state_dict(
                {k.split("attn_temp.")[1]: v for k, v in state.items() if k.startswith(f"{name}.attn_temp.")}
            )
            module.add_module("oracle_norm_temp", norm_temp)
            module.add_module("oracle_attn_temp", attn_temp)
            module.register_forward_hook(_temporal_hook(norm_temp, attn_temp))
    unet.conv_norm_out = VideoGroupNorm5D(unet.conv_norm_out)
    return unet.eval()


def oracle_encoder(state: dict, cfg: dict, fmri: torch.Tensor) -> torch.Tensor:
    """Functional forward of the reference fMRI encoder: (B, W, V) → (B, out_channel, out_dim)."""
    b, w, v = fmri.shape
    dim, heads = cfg["embed_dim"], cfg["num_heads"]
    x = (
        F.conv1d(
            fmri.reshape(b * w, 1, v),
            state["patch_embed.proj.weight"],
            state["patch_embed.proj.bias"],
            stride=cfg["patch_size"],
        ).transpose(1, 2)
        + state["pos_embed"][:, 1:]
    )

    def ln(t, p):
        return F.layer_norm(t, (dim,), state[p + ".weight"], state[p + ".bias"], 1e-5)

    def attention(t, p):
        n_, s, _ = t.shape
        qkv = F.linear(t, state[p + ".qkv.weight"], state[p + ".qkv.bias"]).reshape(n_, s, 3, heads, dim // heads)
        q, k, vv = qkv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        return F.linear(
            (a @ vv).transpose(1, 2).reshape(n_, s, dim), state[p + ".proj.weight"], state[p + ".proj.bias"]
        )

    for i in range(cfg["depth"]):
        p = f"blocks.{i}"
        x = x + attention(ln(x, p + ".norm1"), p + ".attn")
        n = x.shape[1]
        t = x.reshape(b, w, n, dim).transpose(1, 2).reshape(b * n, w, dim)
        t = t + attention(ln(t, p + ".norm_temp"), p + ".attn_temp")
        x = t.reshape(b, n, w, dim).transpose(1, 2).reshape(b * w, n, dim)
        h = F.gelu(F.linear(ln(x, p + ".norm2"), state[p + ".mlp.fc1.weight"], state[p + ".mlp.fc1.bias"]))
        x = x + F.linear(h, state[p + ".mlp.fc2.weight"], state[p + ".mlp.fc2.bias"])
    x = ln(x, "norm").reshape(b, -1, dim)
    x = F.linear(x.transpose(1, 2), state["proj_head.channel_mapper.weight"]).transpose(1, 2)
    projected = F.linear(x, state["proj_head.projection.weight"])
    return projected + F.linear(F.gelu(projected), state["proj_head.fc.weight"])


@torch.no_grad()
def oracle_generate(ckpt: Path, fmri, negative, frames: int, steps: int, guidance: float, seed: int):
    """The reference pipeline's call, returning (B, 3, F, H, W) float in [0, 1]."""
    enc_state = torch.load(ckpt / "fmri_encoder" / "model.pth", map_location="cpu", weights_only=True)["model"]
    enc_cfg = json.loads((ckpt / "fmri_encoder" / "config.json").read_text())
    unet = load_oracle_unet(ckpt / "unet")
    vae = AutoencoderKL.from_pretrained(ckpt / "vae").eval()
    scheduler = DDIMScheduler.from_pretrained(ckpt / "scheduler")
    fmri, negative = torch.as_tensor(fmri), torch.as_tensor(negative)
    pos = oracle_encoder(enc_state, enc_cfg, fmri)
    neg = oracle_encoder(enc_state, enc_cfg, negative).expand_as(pos)
    cond = torch.cat([neg, pos])
    b = fmri.shape[0]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((b, 4, frames, size, size), generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    Clip.frames = frames
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        x2d = x.permute(0, 2, 1, 3, 4).reshape(-1, 4, size, size)
        eps = unet(x2d, t, encoder_hidden_states=cond.repeat_interleave(frames, dim=0)).sample
        eps = eps.reshape(2 * b, frames, 4, size, size).permute(0, 2, 1, 3, 4)
        eps_neg, eps_pos = eps.chunk(2)
        latents = scheduler.step(eps_neg + guidance * (eps_pos - eps_neg), t, latents, eta=0.0).prev_sample
    flat = latents.permute(0, 2, 1, 3, 4).reshape(-1, 4, size, size) / 0.18215
    video = vae.decode(flat).sample
    video = video.reshape(b, frames, 3, size * scale, size * scale).permute(0, 2, 1, 3, 4)
    return (video / 2 + 0.5).clamp(0, 1).numpy()
