"""Checkpoint folders: read the reference MinD-Video layout and diffusers SD folders, write our own.

A checkpoint is a folder of component folders::

    CKPT/fmri_encoder/{config.json, diffusion_pytorch_model.safetensors | model.pth | diffusion_pytorch_model.bin}
    CKPT/unet/{config.json, diffusion_pytorch_model.safetensors | .bin}
    CKPT/vae/        diffusers AutoencoderKL
    CKPT/scheduler/  diffusers scheduler config
    CKPT/data_transform/  (optional) the fitted fMRI transform

We write safetensors; we read safetensors, ``.bin`` and ``.pth`` (a state dict, possibly under ``"model"``). Every
problem with a folder raises :class:`MindVideoError` naming the file and, for weights, the key.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mindvideo.config import read_json
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder
from mindvideo.models.fmri_encoder import FMRIEncoder, FMRIEncoderConfig, sincos_positions
from mindvideo.models.unet import VideoUNet, VideoUNetConfig

log = logging.getLogger(__name__)

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "model.pth",
    "diffusion_pytorch_model.bin",
    "model.bin",
    "pytorch_model.bin",
)
COMPONENTS = ("fmri_encoder", "unet", "vae", "scheduler")


# --------------------------------------------------------------------------------------------------- reading


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
    data = read_json(path)
    for key in ("class_embed_type", "num_class_embeds", "addition_embed_type", "encoder_hid_dim"):
        if data.get(key) is not None:
            raise MindVideoError(
                f"expected an SD-1.x/2.x style UNet config in {path}",
                f"{key}={data[key]!r}",
                "this UNet variant is not supported",
            )
    if any(int(n) != 1 for n in _as_list(data.get("transformer_layers_per_block", 1))):
        raise MindVideoError(
            f"expected one transformer layer per block in {path}",
            f"transformer_layers_per_block={data['transformer_layers_per_block']}",
            "use an SD-1.x UNet",
        )
    try:
        config = VideoUNetConfig.from_dict(data, **overrides)
        config.validate()
    except (TypeError, ValueError) as exc:
        raise MindVideoError(f"expected a supported UNet config in {path}", str(exc), "fix config.json") from None
    return config


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_fmri_encoder(path: str | Path, **overrides: Any) -> FMRIEncoder:
    """A reference ``fmri_encoder/`` folder or our own. ``num_voxels=`` overrides the config (the fixed sin-cos
    positions are recomputed for the new patch count; learned shapes must still fit)."""
    folder = Path(path)
    try:
        config = FMRIEncoderConfig.load(folder / "config.json", **overrides)
    except TypeError as exc:
        raise MindVideoError(f"expected an fMRI encoder config in {folder}", str(exc), "fix config.json") from None
    model = FMRIEncoder(config)
    source = find_weights(folder)
    state = read_state_dict(source)
    pretrain_only = [k for k in state if k.startswith("decoder") and not hasattr(model, k.split(".")[0])]
    if pretrain_only and model.decoder is None:
        log.info("ignoring %d MBM decoder tensors in %s", len(pretrain_only), source)
        state = {k: v for k, v in state.items() if k not in pretrain_only}
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = sincos_positions(config.embed_dim, config.num_patches)[None]  # fixed, not learned
    load_into(model, state, source, optional=("mask_token", "decoder.", "logit_scale"))
    return model


# --------------------------------------------------------------------------------------------------- writing


def save_component(model: FMRIEncoder | VideoUNet, path: str | Path) -> None:
    """``config.json`` + ``diffusion_pytorch_model.safetensors``, written atomically."""
    from safetensors.torch import save_file

    with atomic_folder(path) as tmp:
        config = {"_class_name": type(model).__name__, **model.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------- whole folders


def load_vae(path: str | Path):
    """diffusers ``AutoencoderKL`` from a local folder."""
    from diffusers import AutoencoderKL

    folder = Path(path)
    read_json(folder / "config.json")  # one clear error for a missing/corrupt config
    find_weights(folder)
    try:
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise MindVideoError(
            f"expected a diffusers AutoencoderKL in {folder}",
            f"{type(exc).__name__}: {exc}",
            "re-save the VAE with diffusers' save_pretrained",
        ) from None


def load_scheduler_config(path: str | Path) -> dict[str, Any]:
    """The diffusers scheduler config of ``CKPT/scheduler``."""
    folder = Path(path)
    return read_json(folder / "scheduler_config.json")


def load_components(path: str | Path, *, num_voxels: int | None = None, vae: bool = True) -> dict[str, Any]:
    """Every component of a checkpoint folder: ``fmri_encoder``, ``unet``, ``vae`` (unless ``vae=False``),
    ``scheduler_config`` (dict) and ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise MindVideoError(f"expected a checkpoint folder at {root}", "no such folder", "check --checkpoint")
    absent = [c for c in COMPONENTS if not (root / c).is_dir()]
    if absent:
        raise MindVideoError(
            f"expected component folders {list(COMPONENTS)} in {root}",
            f"{absent} missing",
            "point at the checkpoint root (the folder holding unet/, fmri_encoder/, …)",
        )
    overrides = {} if num_voxels is None else {"num_voxels": num_voxels}
    return {
        "path": root,
        "fmri_encoder": load_fmri_encoder(root / "fmri_encoder", **overrides),
        "unet": load_unet(root / "unet"),
        "vae": load_vae(root / "vae") if vae else None,
        "scheduler_config": load_scheduler_config(root / "scheduler"),
    }


def tiny_vae_config() -> dict[str, Any]:
    """A 4-level AutoencoderKL small enough for CPU tests (8× down-sampling like SD's)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "block_out_channels": (8, 16, 16, 16),
        "sample_size": 64,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
    }


def sd15_vae_config() -> dict[str, Any]:
    return {
        **tiny_vae_config(),
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 512,
    }


SCHEDULER_CONFIG = {  # SD-1.5's scheduler settings, as the reference checkpoints ship them
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def build_random_checkpoint(
    path: str | Path, preset: str = "tiny", *, num_voxels: int | None = None, seed: int = 0, init_scale: float = 0.0
) -> Path:
    """Write a randomly initialised checkpoint (``tiny`` or ``sd15`` sizes) in our layout.

    ``init_scale > 0`` adds Gaussian noise of that std to every UNet weight (temporal layers included) so tests
    exercise all of them instead of the identity-at-init temporal path.
    """
    from diffusers import AutoencoderKL

    if preset not in ("tiny", "sd15"):
        raise MindVideoError("expected preset 'tiny' or 'sd15'", repr(preset), "pick one of those")
    torch.manual_seed(seed)
    if preset == "tiny":
        enc_cfg, unet_cfg, vae_cfg = (
            FMRIEncoderConfig.tiny(num_voxels or 128),
            VideoUNetConfig.tiny(),
            tiny_vae_config(),
        )
    else:
        enc_cfg, unet_cfg, vae_cfg = (
            FMRIEncoderConfig(num_voxels=num_voxels or 4656),
            VideoUNetConfig.sd15(),
            sd15_vae_config(),
        )
    encoder, unet, vae = FMRIEncoder(enc_cfg), VideoUNet(unet_cfg), AutoencoderKL(**vae_cfg)
    if init_scale > 0:
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * init_scale)
    with atomic_folder(path) as tmp:
        save_component(encoder, tmp / "fmri_encoder")
        save_component(unet, tmp / "unet")
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    return Path(path)


def write_reference_layout(src: str | Path, dst: str | Path) -> Path:
    """Rewrite one of our checkpoints in the reference MinD-Video layout (for interop and parity tests).

    ``unet/`` gets 3-D block names and ``diffusion_pytorch_model.bin``; ``fmri_encoder/`` gets ``model.pth`` with
    the state dict under ``"model"`` and only the reference config keys; ``vae/`` and ``scheduler/`` are copied.
    """
    src, dst = Path(src), Path(dst)
    comps = load_components(src)
    with atomic_folder(dst) as tmp:
        # 1. unet: diffusers config with 3-D block type names, torch pickle weights
        unet_cfg = comps["unet"].config.to_dict()
        unet_cfg = {
            k: v for k, v in unet_cfg.items() if k not in ("frame_offsets", "temporal_attention", "video_norm")
        }
        unet_cfg["down_block_types"] = [n.replace("2D", "3D") for n in unet_cfg["down_block_types"]]
        unet_cfg["up_block_types"] = [n.replace("2D", "3D") for n in unet_cfg["up_block_types"]]
        unet_cfg["mid_block_type"] = unet_cfg["mid_block_type"].replace("2D", "3D")
        (tmp / "unet").mkdir()
        (tmp / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel", **unet_cfg}))
        torch.save(comps["unet"].state_dict(), tmp / "unet" / "diffusion_pytorch_model.bin")
        # 2. fmri encoder: reference config keys, state dict under "model"
        enc = comps["fmri_encoder"]
        keys = (
            "num_voxels",
            "patch_size",
            "embed_dim",
            "in_chans",
            "depth",
            "num_heads",
            "mlp_ratio",
            "out_channel",
            "out_dim",
            "use_norm",
            "dropout",
            "window_size",
            "use_temp_attn",
            "logit_scale_init_value",
        )
        enc_cfg = {"_class_name": "fMRIEncoder", **{k: getattr(enc.config, k) for k in keys}}
        (tmp / "fmri_encoder").mkdir()
        (tmp / "fmri_encoder" / "config.json").write_text(json.dumps(enc_cfg))
        torch.save({"model": enc.state_dict()}, tmp / "fmri_encoder" / "model.pth")
        # 3. vae and scheduler as they are
        shutil.copytree(src / "vae", tmp / "vae")
        shutil.copytree(src / "scheduler", tmp / "scheduler")
    return dst
