"""Helpers of the training tests (a module name of its own, so it never clashes with other test folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mindvideo.train import resolve_config, run_stage


def config(stage: str, overrides: dict[str, Any] | None = None, preset: str = "tiny"):
    return resolve_config(stage, preset=preset, overrides={"train.threads": 1, **(overrides or {})})


def run(stage: str, data: Path, out: Path, overrides: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    run_stage(stage, config(stage, overrides), data, out, **kwargs)
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder``, keyed by relative path and name."""
    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(path)).items():
            out[f"{path.relative_to(folder)}:{key}"] = value
    return out


def _without_key_bias(key: str, value: torch.Tensor) -> torch.Tensor:
    """The key part of a fused ``qkv`` bias zeroed: softmax ignores it, so its gradient is zero in exact arithmetic
    and Adam turns the float noise of that zero into steps of up to ~lr, which differ between batch layouts."""
    if key.endswith("qkv.bias"):
        value = value.clone()
        third = len(value) // 3
        value[third : 2 * third] = 0
    return value


def assert_same_weights(
    a: Path, b: Path, atol: float = 1e-6, ignore_key_bias: bool = False, outliers: float = 0.0, bound: float = 0.0
) -> None:
    """Every weight within ``atol``; or, with ``outliers``, at most that share of each tensor beyond ``atol`` and
    none beyond ``bound`` (for Adam: a weight whose gradient is near zero may step either way on float rounding)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        x, y = (_without_key_bias(key, w[key]) if ignore_key_bias else w[key] for w in (wa, wb))
        diff = (x.double() - y.double()).abs()
        if outliers and diff.numel() and bool((diff > atol).any()):
            share, worst = float((diff > atol).double().mean()), float(diff.max())
            assert share <= outliers and worst <= bound, f"{key}: {share:.2%} of weights beyond {atol}, max {worst}"
            continue
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
