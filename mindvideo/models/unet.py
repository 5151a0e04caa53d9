"""``VideoUNet``: the SD-1.5 UNet inflated to video (MinD-Video §3.3, after Tune-A-Video).

Every 2-D convolution, up/down-sampling and transformer runs per frame on ``(B·F, C, H, W)``; self-attention becomes
sparse-causal over earlier frames, a zero-initialised temporal attention follows each feed-forward, and
cross-attention conditions every frame on the clip's fMRI embedding ``(B, 77, 768)``.

One detail follows the reference code rather than a per-frame reading of the paper: the GroupNorms of the resnets
and of ``conv_norm_out`` run on the 5-D video tensor, so their statistics pool all frames of a clip
(``video_norm="video"``, the default). ``video_norm="frame"`` normalises each frame alone. With identical frames the
two agree, and so does the whole network with diffusers' ``UNet2DConditionModel``.

State-dict keys equal diffusers' ``UNet2DConditionModel`` plus ``attn_temp.*`` / ``norm_temp.*``.

A *student* (``guidance_embedding=True``, see :mod:`mindvideo.train.stages.distill`) also takes the guidance scale
g as an input (Meng et al. CVPR 2023, guidance distillation; the w-embedding of LCM, Luo et al. 2023): g·1000 gets
the sinusoidal embedding of a timestep and its own MLP (``guidance_embedding.*``, last layer zero-initialised), added
to the time embedding. A fresh student therefore equals its teacher's conditional model for every g.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.config import Config, read_json
from mindvideo.errors import MindVideoError
from mindvideo.models.attention import VideoTransformer
from mindvideo.weights import find_weights, load_into, read_state_dict, save_component

CROSS_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock3D")
PLAIN_DOWN = ("DownBlock2D", "DownBlock3D")
CROSS_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock3D")
PLAIN_UP = ("UpBlock2D", "UpBlock3D")
MID = ("UNetMidBlock2DCrossAttn", "UNetMidBlock3DCrossAttn")
# VideoUNetConfig fields kept for diffusers compatibility whose other values VideoUNet does not compute
FIXED_FIELDS: dict[str, Any] = {"act_fn": "silu", "mid_block_scale_factor": 1.0}
# diffusers UNet2DConditionModel settings VideoUNet does not implement: a stored config may carry them only with the
# values that compute what VideoUNet computes (a per-block list: in every entry)
DIFFUSERS_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "upcast_attention": (False,),
    "cross_attention_norm": (None,),
    "attention_type": ("default",),
    "transformer_layers_per_block": (1,),
    "reverse_transformer_layers_per_block": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "dropout": (0.0,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "projection_class_embeddings_input_dim": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
}
DIFFUSERS_UNUSED = ("addition_embed_type_num_heads",)  # read by diffusers only with an addition_embed_type


@dataclasses.dataclass
class VideoUNetConfig(Config):
    """The diffusers ``UNet2DConditionModel`` config keys we support, the video settings (``frame_offsets``,
    ``temporal_attention``, ``video_norm``) and the student settings (last three; off for a teacher)."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers' historical name: the number of heads for SD-1.x
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    frame_offsets: tuple[int | None, ...] = (-2, -1)
    temporal_attention: bool = True
    video_norm: str = "video"
    # a distilled student: takes g (``forward(..., guidance=g)``), was trained for g in guidance_range, and samples
    # only with the named schedulers (None: any, as a teacher)
    guidance_embedding: bool = False
    guidance_range: tuple[float, float] | None = None
    schedulers: tuple[str, ...] | None = None

    @classmethod
    def sd15(cls) -> VideoUNetConfig:
        """Stable Diffusion 1.5's UNet (859.5 M parameters before the temporal layers)."""
        return cls()

    @classmethod
    def tiny(cls) -> VideoUNetConfig:
        """Test/demo size: channels (32, 64), 8 groups, cross-attention dim 32."""
        return cls(
            sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        )

    def heads(self) -> tuple[int, ...]:
        heads = self.num_attention_heads or self.attention_head_dim
        return tuple(heads) if isinstance(heads, tuple) else (heads,) * len(self.down_block_types)

    def validate(self) -> None:
        for key, supported in FIXED_FIELDS.items():
            if getattr(self, key) != supported:
                raise ValueError(f"{key}={getattr(self, key)!r} (supported: {supported!r})")
        for key in ("layers_per_block", "cross_attention_dim", "norm_num_groups"):
            if not isinstance(getattr(self, key), int):
                raise ValueError(f"{key}={getattr(self, key)!r} (supported: one integer for every block)")
        for kind, names in (("down", self.down_block_types), ("up", self.up_block_types)):
            allowed = CROSS_DOWN + PLAIN_DOWN if kind == "down" else CROSS_UP + PLAIN_UP
            bad = [n for n in names if n not in allowed]
            if bad:
                raise ValueError(f"unsupported {kind} block types {bad}; expected {allowed}")
        if self.mid_block_type not in MID:
            raise ValueError(f"unsupported mid block {self.mid_block_type!r}; expected {MID}")
        if self.video_norm not in ("video", "frame"):
            raise ValueError(f"video_norm must be 'video' or 'frame', got {self.video_norm!r}")
        self._validate_student()

    def _validate_student(self) -> None:
        from mindvideo.sampling import SCHEDULERS

        if self.guidance_range is not None:
            if not self.guidance_embedding:
                raise ValueError("guidance_range is set but guidance_embedding is False (only a student has one)")
            if len(self.guidance_range) != 2 or not 0 < self.guidance_range[0] <= self.guidance_range[1]:
                raise ValueError(f"guidance_range must be (low, high) with 0 < low <= high, got {self.guidance_range}")
        if self.schedulers is not None:
            bad = [k for k in self.schedulers if k not in SCHEDULERS]
            if bad or not self.schedulers:
                raise ValueError(f"schedulers must be a non-empty subset of {SCHEDULERS}, got {self.schedulers}")


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps, (B,) → (B, dim) fp32, as in DDPM/LDM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    angles = t.float()[:, None] * freqs[None]
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim, out), nn.Linear(out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class VideoGroupNorm(nn.GroupNorm):
    """GroupNorm on ``(B·F, C, H, W)`` whose statistics pool the F frames of each clip (the reference's 5-D norm)."""

    def forward_video(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if frames == 1:
            return super().forward(x)
        bf, c, h, w = x.shape
        b, groups = bf // frames, self.num_groups
        # each group's frames side by side, (B, G, F·C/G·H·W): one plain group norm (InstanceNormalization in ONNX)
        # instead of a chain of reductions and broadcasts over the whole tensor
        g = x.float().reshape(b, frames, groups, -1).transpose(1, 2).reshape(b, groups, -1)
        y = F.group_norm(g, groups, eps=self.eps).reshape(b, groups, frames, -1).transpose(1, 2)
        y = y.reshape(bf, c, h, w).to(x.dtype)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def norm(x: torch.Tensor, layer: VideoGroupNorm, frames: int, video: bool) -> torch.Tensor:
    return layer.forward_video(x, frames) if video else layer(x)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv → + time → GroupNorm → SiLU → conv, with a 1×1 shortcut when channels change."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, video_norm: bool):
        super().__init__()
        self.video_norm = video_norm
        self.norm1 = VideoGroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = VideoGroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B·F, C, H, W); ``emb``: (B·F, T) → (B·F, C', H, W)."""
        h = self.conv1(F.silu(norm(x, self.norm1, frames, self.video_norm)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(norm(h, self.norm2, frames, self.video_norm)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest"))


def make_transformer(cfg: VideoUNetConfig, channels: int, heads: int) -> VideoTransformer:
    return VideoTransformer(
        channels,
        heads,
        cfg.cross_attention_dim,
        cfg.frame_offsets,
        groups=cfg.norm_num_groups,
        linear_projection=cfg.use_linear_projection,
        temporal=cfg.temporal_attention,
    )


def make_resnet(cfg: VideoUNetConfig, cin: int, cout: int) -> ResnetBlock:
    temb = cfg.block_out_channels[0] * 4
    return ResnetBlock(cin, cout, temb, cfg.norm_num_groups, cfg.norm_eps, cfg.video_norm == "video")


class UNetBlock(nn.Module):
    """One resolution level: resnets (input channels ``in_channels[i]``, output ``cout``), each followed by a
    transformer when ``cross``, then a resampler (``"down"``, ``"up"`` or none). In an up block each resnet's input
    includes the skip tensor it concatenates."""

    def __init__(
        self, cfg: VideoUNetConfig, in_channels: list[int], cout: int, heads: int, *, cross: bool, resample: str
    ):
        super().__init__()
        self.resnets = nn.ModuleList([make_resnet(cfg, c, cout) for c in in_channels])
        self.attentions = nn.ModuleList([make_transformer(cfg, cout, heads) for _ in in_channels]) if cross else None
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout, cfg.downsample_padding)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def forward_down(self, x, emb, context, frames):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb, frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, frames)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips

    def forward_up(self, x, emb, context, frames, skips: list[torch.Tensor], size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb, frames)  # (B·F, C+C_skip, H, W)
            if self.attentions is not None:
                x = self.attentions[i](x, context, frames)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    def __init__(self, cfg: VideoUNetConfig, channels: int, heads: int):
        super().__init__()
        self.resnets = nn.ModuleList([make_resnet(cfg, channels, channels) for _ in range(2)])
        self.attentions = nn.ModuleList([make_transformer(cfg, channels, heads)])

    def forward(self, x, emb, context, frames):
        x = self.resnets[0](x, emb, frames)
        x = self.attentions[0](x, context, frames)
        return self.resnets[1](x, emb, frames)


class VideoUNet(nn.Module):
    """The inflated SD UNet: ``forward(sample (B, C, F, h, w), timestep, encoder_hidden_states (B, L, D))``."""

    def __init__(self, config: VideoUNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or VideoUNetConfig()
        cfg.validate()
        chans, heads = cfg.block_out_channels, cfg.heads()
        temb = chans[0] * 4
        # 1. input, time embedding
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        if cfg.guidance_embedding:
            self.guidance_embedding = TimestepEmbedding(chans[0], temb)
            nn.init.zeros_(self.guidance_embedding.linear_2.weight)  # zero output: a fresh student = its teacher
            nn.init.zeros_(self.guidance_embedding.linear_2.bias)
        # 2. down path; record the skip channels the up path will pop
        skips = [chans[0]]
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            cin, final = chans[max(i - 1, 0)], i == len(chans) - 1
            ins = [cin] + [chans[i]] * (cfg.layers_per_block - 1)
            block = UNetBlock(cfg, ins, chans[i], heads[i], cross=kind in CROSS_DOWN, resample="" if final else "down")
            self.down_blocks.append(block)
            skips += [chans[i]] * (cfg.layers_per_block + (0 if final else 1))
        # 3. middle
        self.mid_block = MidBlock(cfg, chans[-1], heads[-1])
        # 4. up path, mirrored
        self.up_blocks = nn.ModuleList()
        prev, up_heads = chans[-1], heads[::-1]
        for i, kind in enumerate(cfg.up_block_types):
            cout, final = chans[::-1][i], i == len(chans) - 1
            # resnet j sees the previous output (prev for j = 0, then cout) concatenated with the skip it pops
            taken = [skips.pop() for _ in range(cfg.layers_per_block + 1)]
            ins = [(prev if j == 0 else cout) + skip for j, skip in enumerate(taken)]
            block = UNetBlock(cfg, ins, cout, up_heads[i], cross=kind in CROSS_UP, resample="" if final else "up")
            self.up_blocks.append(block)
            prev = cout
        # 5. output
        self.conv_norm_out = VideoGroupNorm(cfg.norm_num_groups, chans[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Predict the noise of a latent video. ``sample`` (B, C, F, h, w), ``timestep`` scalar or (B,),
        ``encoder_hidden_states`` (B, L, D), ``guidance`` (students only) g scalar or (B,) → (B, C_out, F, h, w)."""
        b, c, f, h, w = sample.shape
        cfg, video = self.config, self.config.video_norm == "video"
        # 1. time (+ guidance) embedding, one row per frame
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(emb.to(sample.dtype))
        if cfg.guidance_embedding or guidance is not None:
            emb = emb + self._guidance_embedding(guidance, b, sample)  # students only: teachers' graphs unchanged
        emb = emb[:, None].expand(b, f, -1).reshape(b * f, -1)  # (B·F, T): frame-major rows, like x
        # 2. frames into the batch
        x = self.conv_in(sample.transpose(1, 2).reshape(b * f, c, h, w))  # (B·F, C0, h, w)
        context = encoder_hidden_states
        # 3. down
        skips = [x]
        for block in self.down_blocks:
            x, res = block.forward_down(x, emb, context, f)
            skips += res
        # 4. middle
        x = self.mid_block(x, emb, context, f)
        # 5. up; each upsampler matches the size of the skip it meets next (odd latent sizes work)
        for block in self.up_blocks:
            size = skips[-len(block.resnets) - 1].shape[-2:] if hasattr(block, "upsamplers") else None
            x = block.forward_up(x, emb, context, f, skips, size)
        # 6. output
        x = self.conv_out(F.silu(norm(x, self.conv_norm_out, f, video)))
        return x.reshape(b, f, -1, h, w).transpose(1, 2)  # (B, C_out, F, h, w)

    def _guidance_embedding(self, guidance: torch.Tensor | float | None, b: int, sample: torch.Tensor) -> torch.Tensor:
        """(B, T) embedding of g·1000 (LCM's w-embedding) for a student; refuses a missing ``guidance`` on a student
        and any ``guidance`` on a teacher."""
        if not self.config.guidance_embedding and guidance is not None:
            raise MindVideoError(
                "expected no guidance input for a teacher UNet (guidance_embedding is off)",
                f"guidance={guidance!r}" if not isinstance(guidance, torch.Tensor) else "a guidance tensor",
                "use the two-pass guided loop (cond = [negative; positive]) or a distilled student",
            )
        if guidance is None:
            raise MindVideoError(
                "expected a guidance input g for a student UNet (guidance_embedding is on)",
                "guidance=None",
                "pass guidance=g (a float or a (B,) tensor) with only the positive condition",
            )
        g = torch.as_tensor(guidance, device=sample.device, dtype=torch.float32).reshape(-1).expand(b)
        cfg = self.config
        emb = timestep_embedding(g * 1000.0, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        return self.guidance_embedding(emb.to(sample.dtype))

    @classmethod
    def student_of(cls, teacher: VideoUNet, **changes) -> VideoUNet:
        """A fresh student with the teacher's weights and a zero-output guidance embedding (equal to the teacher's
        conditional model for every g); ``changes`` set e.g. ``guidance_range`` and ``schedulers``."""
        if teacher.config.guidance_embedding:
            raise MindVideoError(
                "expected a teacher UNet (guidance_embedding off) to initialise a student from",
                "a UNet that is already a student",
                "distil from the trained video model (the cotrain checkpoint)",
            )
        student = cls(teacher.config.replace(guidance_embedding=True, **changes)).to(teacher.device, teacher.dtype)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("guidance_embedding.") for k in missing), (missing, unexpected)
        return student

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @classmethod
    def from_pretrained(cls, path, **overrides) -> VideoUNet:
        """Load a diffusers SD UNet folder (inflated), a reference MinD-Video ``unet/`` folder, or our own."""
        return load_unet(path, **overrides)

    def save_pretrained(self, path) -> None:
        save_component(self, path)


# --------------------------------------------------------------------------------------------------- loading


def load_unet(path: str | Path, **overrides: Any) -> VideoUNet:
    """A diffusers SD UNet folder (inflated: temporal layers at init), a reference MinD-Video ``unet/`` folder
    (2-D or 3-D block names, ``.bin`` or safetensors) or our own; ``overrides`` change config fields."""
    folder = Path(path)
    config = _read_unet_config(folder / "config.json", overrides)
    model = VideoUNet(config)
    source = find_weights(folder)
    optional = ("attn_temp.", "norm_temp.")
    if overrides.get("guidance_embedding") and not read_json(folder / "config.json").get("guidance_embedding"):
        optional += ("guidance_embedding.",)  # a teacher loaded as a fresh student: zero-output embedding
    load_into(model, read_state_dict(source), source, optional=optional)
    return model


def _read_unet_config(path: Path, overrides: dict[str, Any]) -> VideoUNetConfig:
    """Our config, or a diffusers/reference one whose settings VideoUNet does not implement hold the values that
    compute the same network (anything else is refused by name); an unknown key is refused too."""
    data = read_json(path)
    for key, supported in DIFFUSERS_FIXED.items():
        if key in data and not all(_is_one_of(v, supported) for v in _as_list(data[key])):
            raise MindVideoError(
                f"expected a UNet config that VideoUNet implements (an SD-1.x-style UNet) in {path}",
                f"{key}={data[key]!r} (supported: {' or '.join(map(repr, supported))})",
                "VideoUNet does not compute this variant; use an SD-1.x-style UNet",
            )
    data = {k: v for k, v in data.items() if k not in DIFFUSERS_FIXED and k not in DIFFUSERS_UNUSED}
    try:
        config = VideoUNetConfig.from_dict(data, **overrides)
        config.validate()
    except MindVideoError as exc:  # an unknown key
        raise MindVideoError(f"{exc.what} in {path}", exc.found, exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise MindVideoError(f"expected a supported UNet config in {path}", str(exc), "fix config.json") from None
    return config


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_one_of(value: Any, supported: tuple[Any, ...]) -> bool:
    """``value`` equals one of ``supported`` with a matching kind (``0`` is not ``False``, ``None`` not ``0``)."""
    return any(value == s and isinstance(value, bool) == isinstance(s, bool) for s in supported)
