"""The inflated transformer of the video UNet: sparse-causal self-attention, cross-attention, GEGLU feed-forward
and temporal attention (MinD-Video §3.3, after Tune-A-Video).

Hidden states travel as ``(B·F, N, C)`` (frame-major inside each batch item, N = h·w tokens). Parameter names equal
diffusers' ``Transformer2DModel`` / ``BasicTransformerBlock`` so SD-1.5 weights load as they are, plus the
MinD-Video additions ``attn_temp.*`` and ``norm_temp.*``. All attention goes through :mod:`mindvideo.kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from mindvideo import kernels


class Attention(nn.Module):
    """Multi-head attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``); the core is passed in."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def split_heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``(batch·n, C)`` token rows (or ``(batch, n, C)``) → ``(batch, heads, n, d)``."""
        c = x.shape[-1]
        return x.reshape(batch, -1, self.heads, c // self.heads).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, heads, n, d)`` → ``to_out`` of the ``(b·n, C)`` token rows."""
        b, h, n, d = x.shape
        return self.to_out[0](x.transpose(1, 2).reshape(b * n, h * d))

    def qkv(self, x: torch.Tensor, batch: int, context: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Queries of the token rows ``x`` (``batch`` sequences), keys and values of ``context`` (default ``x``),
        each ``(batch, heads, n, d)``."""
        context = x if context is None else context
        return (
            self.split_heads(self.to_q(x), batch),
            self.split_heads(self.to_k(context), batch),
            self.split_heads(self.to_v(context), batch),
        )


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two products on the halves of ``proj`` (views): the same numbers as chunking one product, without the copy
        inner = self.proj.out_features // 2
        weight, bias = self.proj.weight, self.proj.bias
        return F.linear(x, weight[:inner], bias[:inner]) * F.gelu(F.linear(x, weight[inner:], bias[inner:]))


class FeedForward(nn.Module):
    """GEGLU MLP with diffusers' key names ``net.0.proj`` / ``net.2``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class VideoTransformerBlock(nn.Module):
    """Sparse-causal self-attention → cross-attention → feed-forward → temporal attention, each pre-norm residual."""

    def __init__(
        self, dim: int, heads: int, context_dim: int, frame_offsets: Sequence[int | None], temporal: bool = True
    ):
        super().__init__()
        self.frame_offsets = tuple(frame_offsets)
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)
        self.temporal = temporal
        if temporal:
            self.norm_temp, self.attn_temp = nn.LayerNorm(dim), Attention(dim, heads)
            # zero weight *and* bias: an inflated SD UNet starts exactly as the image model
            nn.init.zeros_(self.attn_temp.to_out[0].weight)
            nn.init.zeros_(self.attn_temp.to_out[0].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B·F, N, C); ``context``: (B, L, D) → (B·F, N, C)."""
        bf, n, c = x.shape
        b = bf // frames
        # token rows (B·F·N, C), frame-major: every norm and projection is one row-wise op (a Gemm with its bias in
        # ONNX); only the attention cores see heads
        x = x.reshape(bf * n, c)
        # 1. sparse-causal self-attention over frames f+o (clamped)
        q, k, v = self.attn1.qkv(self.norm1(x), bf)  # (B·F, h, N, d)
        x = x + self.attn1.merge_heads(kernels.sparse_causal_attention(q, k, v, frames, self.frame_offsets))
        # 2. cross-attention: every frame of a clip attends to the clip's condition
        q, k, v = self.attn2.qkv(self.norm2(x), b, context)  # q (B, h, F·N, d); k, v (B, h, L, d)
        x = x + self.attn2.merge_heads(F.scaled_dot_product_attention(q, k, v))
        # 3. feed-forward
        x = x + self.ff(self.norm3(x))
        if not self.temporal:
            return x.reshape(bf, n, c)
        # 4. temporal attention across frames at each token: norm and projections stay on the frame-major rows,
        # q, k, v go straight to (B·N, h, F, d) and the output straight back
        t = self.norm_temp(x)
        attn = self.attn_temp
        q, k, v = (self._across_frames(p(t), b, frames) for p in (attn.to_q, attn.to_k, attn.to_v))
        o = kernels.temporal_attention(q, k, v)  # (B·N, h, F, d)
        o = o.reshape(b, n, attn.heads, frames, -1).permute(0, 3, 1, 2, 4).reshape(bf * n, c)  # frame-major rows
        return (x + attn.to_out[0](o)).reshape(bf, n, c)

    def _across_frames(self, rows: torch.Tensor, b: int, frames: int) -> torch.Tensor:
        """Frame-major token rows ``(B·F·N, C)`` → ``(B·N, heads, F, d)``: one sequence of frames per token."""
        heads, c = self.attn_temp.heads, rows.shape[-1]
        t = rows.reshape(b, frames, -1, heads, c // heads).permute(0, 2, 3, 1, 4)  # (B, N, h, F, d)
        return t.reshape(-1, heads, frames, c // heads)


class VideoTransformer(nn.Module):
    """diffusers' ``Transformer2DModel`` inflated: GroupNorm → proj_in → blocks → proj_out, residual, per frame."""

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        frame_offsets: Sequence[int | None],
        *,
        groups: int = 32,
        layers: int = 1,
        linear_projection: bool = False,
        temporal: bool = True,
    ):
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        proj = nn.Linear if linear_projection else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [VideoTransformerBlock(channels, heads, context_dim, frame_offsets, temporal) for _ in range(layers)]
        )
        self.proj_out = proj(channels, channels)
        self.gradient_checkpointing = False  # training: recompute block activations in the backward pass

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B·F, C, H, W) → same shape."""
        bf, c, hh, ww = x.shape
        h = self.norm(x)
        if not self.linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(bf, hh * ww, c)  # (B·F, HW, C)
        if self.linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, context, frames, use_reentrant=False)
            else:
                h = block(h, context, frames)
        if self.linear_projection:
            h = self.proj_out(h)
        h = h.reshape(bf, hh, ww, c).permute(0, 3, 1, 2)  # (B·F, C, H, W)
        if not self.linear_projection:
            h = self.proj_out(h.contiguous())
        return h + x
