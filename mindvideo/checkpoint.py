"""Checkpoint folders (``fmri_encoder/``, ``unet/``, ``vae/``, ``scheduler/``, optional ``data_transform/``): ours,
the reference MinD-Video layout and diffusers SD folders are read; ours are written (safetensors).

One component folder's files are :mod:`mindvideo.weights`; each model reads its own (``load_unet``,
``load_fmri_encoder``, re-exported here with the rest of the checkpoint API).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mindvideo.config import read_json
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder
from mindvideo.models.fmri_encoder import FMRIEncoder, FMRIEncoderConfig
from mindvideo.models.fmri_encoder import load_fmri_encoder as load_fmri_encoder
from mindvideo.models.unet import VideoUNet, VideoUNetConfig
from mindvideo.models.unet import load_unet as load_unet
from mindvideo.weights import WEIGHT_NAMES as WEIGHT_NAMES
from mindvideo.weights import check_module_finite, verify_checksum
from mindvideo.weights import find_weights as find_weights
from mindvideo.weights import load_into as load_into
from mindvideo.weights import read_state_dict as read_state_dict
from mindvideo.weights import save_component as save_component
from mindvideo.weights import set_verification as set_verification
from mindvideo.weights import write_checksums as write_checksums

COMPONENTS = ("fmri_encoder", "unet", "vae", "scheduler")


def load_vae(path: str | Path):
    """diffusers ``AutoencoderKL`` from a local folder."""
    from diffusers import AutoencoderKL

    folder = Path(path)
    read_json(folder / "config.json")  # one clear error for a missing/corrupt config
    weights = find_weights(folder)
    verify_checksum(weights)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise MindVideoError(
            f"expected a diffusers AutoencoderKL in {folder}",
            f"{type(exc).__name__}: {exc}",
            "re-save the VAE with diffusers' save_pretrained",
        ) from None
    check_module_finite(vae, weights)
    return vae


# the keys that fix the noise schedule: diffusers would fill any missing one with its own default (a linear
# 0.0001–0.02 schedule, not SD's), which changes every sample without a word
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")


def load_scheduler_config(path: str | Path) -> dict[str, Any]:
    """The diffusers scheduler config of ``CKPT/scheduler``; refuses one missing a key of :data:`SCHEDULE_KEYS`
    (``trained_betas`` may stand in for the three ``beta_*`` keys)."""
    file = Path(path) / "scheduler_config.json"
    config = read_json(file)
    required = SCHEDULE_KEYS[:1] if config.get("trained_betas") is not None else SCHEDULE_KEYS
    missing = [key for key in required if key not in config]
    if missing:
        raise MindVideoError(
            f"expected the noise-schedule keys {', '.join(required)} in {file}",
            f"{', '.join(missing)} missing",
            "restore the checkpoint's scheduler_config.json (SD-1.5: scaled_linear, 0.00085–0.012, 1000 steps)",
        )
    return config


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
        write_checksums(tmp / "vae")
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
        # the reference state dict also holds the encoder's (unused) MAE mask token
        mask_token = torch.randn(1, 1, enc.config.embed_dim) * 0.02
        torch.save({"model": {**enc.state_dict(), "mask_token": mask_token}}, tmp / "fmri_encoder" / "model.pth")
        # 3. vae and scheduler as they are
        shutil.copytree(src / "vae", tmp / "vae")
        shutil.copytree(src / "scheduler", tmp / "scheduler")
    return dst
