"""The ``nn.Module`` each exported graph is traced from, with the exact signature of its :class:`ExportSpec`.

The encoder and the UNet export as they are: a student UNet's ``forward(sample, timestep, encoder_hidden_states,
guidance)`` takes the spec's fourth input, ``guidance`` (g per row), positionally like the others. The VAE decoder
gets a thin wrapper that folds in what every caller does around ``vae.decode``: undo the latent scaling
(``latent / scaling_factor``) and map ``[-1, 1]`` to ``[0, 1]``. The tiny decoder takes ``vae.decode``'s input and gets
the same wrapper, so the two decoder graphs are interchangeable.
The runtime's PyTorch backend should call these same modules so every backend computes one function.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindvideo.errors import MindVideoError


class VAEDecoderForExport(nn.Module):
    """``latent (N, 4, h, w)`` as the sampler leaves it → ``images (N, 3, 8h, 8w)`` in [0, 1], one row per frame."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]  # (N, 3, H, W) in ~[-1, 1]
        return (images / 2 + 0.5).clamp(0, 1)


class TinyDecoderForExport(nn.Module):
    """The tiny decoder with :class:`VAEDecoderForExport`'s signature: ``latent (N, 4, h, w)`` as the sampler leaves
    it → ``images (N, 3, H, W)`` in [0, 1]. ``scaling_factor`` is the VAE's (the tiny decoder takes ``vae.decode``'s
    input)."""

    def __init__(self, decoder: nn.Module, scaling_factor: float):
        super().__init__()
        self.decoder, self.scaling_factor = decoder, float(scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.decoder(latent / self.scaling_factor)  # (N, 3, H, W) in [-1, 1]
        return (images / 2 + 0.5).clamp(0, 1)


def network_module(name: str, components: dict[str, Any]) -> nn.Module:
    """The eval-mode fp32 module of network ``name`` from :func:`mindvideo.checkpoint.load_components`' dict."""
    if name == "fmri_encoder":
        module = components["fmri_encoder"]
    elif name == "unet":
        module = components["unet"]
    elif name == "vae_decoder":
        if components.get("vae") is None:
            raise MindVideoError("expected a VAE in the checkpoint to export the decoder", "none loaded")
        module = VAEDecoderForExport(components["vae"])
    elif name == "tiny_decoder":
        if components.get("tiny_decoder") is None:
            raise MindVideoError("expected a tiny decoder in the checkpoint to export it", "none loaded")
        scaling = components.get("vae_scaling") or getattr(components["vae"].config, "scaling_factor", 0.18215)
        module = TinyDecoderForExport(components["tiny_decoder"], scaling)
    else:
        raise ValueError(f"unknown network {name!r}")
    return module.float().eval().requires_grad_(False)


def load_network(name: str, checkpoint: str | Path) -> nn.Module:
    """Load only what network ``name`` needs from a checkpoint folder (one SD-1.5 model in memory at a time)."""
    from mindvideo.checkpoint import load_fmri_encoder, load_unet, load_vae
    from mindvideo.config import read_json
    from mindvideo.models.tiny_decoder import TinyDecoder

    root = Path(checkpoint)
    loaders = {
        "fmri_encoder": lambda: {"fmri_encoder": load_fmri_encoder(root / "fmri_encoder")},
        "unet": lambda: {"unet": load_unet(root / "unet")},
        "vae_decoder": lambda: {"vae": load_vae(root / "vae")},
        "tiny_decoder": lambda: {
            "tiny_decoder": TinyDecoder.from_pretrained(root / "tiny_decoder"),
            "vae_scaling": read_json(root / "vae" / "config.json").get("scaling_factor") or 0.18215,
        },
    }
    if name not in loaders:
        raise ValueError(f"unknown network {name!r}")
    return network_module(name, loaders[name]())


def cast_module(module: nn.Module, precision: str) -> nn.Module:
    """A copy of ``module`` in the graph precision (``fp32`` returns ``module`` itself)."""
    if precision == "fp32":
        return module
    if precision == "fp16":
        return copy.deepcopy(module).half()
    raise ValueError(f"unknown graph precision {precision!r}")
