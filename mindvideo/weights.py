"""One component folder: ``config.json`` and a weight file (safetensors, ``.bin`` or ``.pth``), read and written.

Every problem with a folder raises :class:`MindVideoError` naming the file and, for weights, the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "model.pth",
    "diffusion_pytorch_model.bin",
    "model.bin",
    "pytorch_model.bin",
)


def find_weights(folder: Path) -> Path:
    """The weight file of a component folder, preferring safetensors."""
    if not folder.is_dir():
        raise MindVideoError(f"expected a checkpoint folder at {folder}", "no such folder", "check the path")
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise MindVideoError(
        f"expected a weight file ({', '.join(WEIGHT_NAMES)}) in {folder}",
        f"{sorted(p.name for p in folder.iterdir())}",
        "copy the component's weights into that folder",
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / torch pickle file; unwraps a top-level ``"model"`` or ``"state_dict"`` key."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / not a checkpoint: all the user's to fix
        raise MindVideoError(
            f"expected a readable weight file at {path}",
            f"{type(exc).__name__}: {exc}",
            "re-download or re-save the checkpoint",
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MindVideoError(f"expected a state dict of tensors in {path}", type(state).__name__, "re-save it")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path, optional: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model``; keys containing any of ``optional`` may be missing (kept at init)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(o in k for o in optional)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        raise MindVideoError(
            f"expected the weights in {source} to fit {type(model).__name__}",
            "; ".join(detail),
            "check that config.json belongs to these weights",
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise MindVideoError(
                f"expected {key} in {source} to have shape {tuple(own[key].shape)}",
                f"{tuple(value.shape)}",
                "check config.json (num_voxels, channels, heads)",
            )
    model.load_state_dict({**own, **state})


def save_component(model: nn.Module, path: str | Path) -> None:
    """``config.json`` (``model.config``) + ``diffusion_pytorch_model.safetensors``, written atomically."""
    from safetensors.torch import save_file

    with atomic_folder(path) as tmp:
        config = {"_class_name": type(model).__name__, **model.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
