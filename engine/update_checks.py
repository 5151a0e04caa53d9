"""Checks of the fused update's torch tensors, shared by the torch and Triton versions (no Triton import)."""

from __future__ import annotations

import torch

from mindvideo.errors import MindVideoError

EPS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_update_tensors(
    x: torch.Tensor,
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor | None,
    state: torch.Tensor | None,
    noise: torch.Tensor | None,
    *,
    stateful: bool,
    noisy: bool,
) -> None:
    """Raise :class:`MindVideoError` unless the update's tensors fit: ``x``/``state`` float32, model outputs and
    noise float32/fp16/bf16, all contiguous, same shape and device; ``state``/``noise`` present when needed."""
    named = {"x": x, "eps_pos": eps_pos, "eps_neg": eps_neg, "state": state, "noise": noise}
    if stateful and state is None:
        raise MindVideoError(
            "expected a state buffer for a multistep step",
            "state=None",
            "pass torch.zeros_like(x) and keep it across steps",
        )
    if noisy and noise is None:
        raise MindVideoError(
            "expected a noise draw for a stochastic step (DDIM eta > 0)", "noise=None", "pass torch.randn_like(x)"
        )
    for name, t in named.items():
        if t is None:
            continue
        allowed = (torch.float32,) if name in ("x", "state") else EPS_DTYPES
        if not isinstance(t, torch.Tensor) or t.dtype not in allowed:
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise MindVideoError(
                f"expected {name} as a tensor of dtype {' / '.join(map(str, allowed))}",
                str(found),
                f"convert it with {name}.float()",
            )
        if not t.is_contiguous():
            raise MindVideoError(f"expected {name} contiguous", "a non-contiguous view", f"pass {name}.contiguous()")
        if t.shape != x.shape or t.device != x.device:
            raise MindVideoError(
                f"expected {name} of shape {tuple(x.shape)} on {x.device}",
                f"shape {tuple(t.shape)} on {t.device}",
                "match the latents",
            )
