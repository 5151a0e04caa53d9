"""Progressive training of MinD-Video (§3) and the small-data recipe behind the built-in demo.

Stages (each ``mindvideo train <stage>``): ``mbm`` (masked brain modelling) → ``contrastive`` (encoder vs CLIP)
→ ``unet-text`` (text-tuned video UNet) → ``cotrain`` (encoder + UNet attention, the final checkpoint); ``vae`` and
``clip`` train the tiny stand-ins for SD's VAE and CLIP on simulated data. One trainer drives them all
(:mod:`mindvideo.train.trainer`): mixed precision, gradient checkpointing and accumulation, EMA, warm-up + cosine,
seeded resumable data order, checkpoints, CSV/TensorBoard metrics, sample grids, DDP/FSDP through torchrun.

Python use::

    from mindvideo.train import resolve_config, run_stage
    config = resolve_config("mbm", preset="demo", overrides=["train.steps=100"])
    run_stage("mbm", config, "prepared/", "runs/mbm")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mindvideo.config import read_json
from mindvideo.errors import MindVideoError
from mindvideo.train.config import StageConfig, TrainConfig, parse_overrides
from mindvideo.train.recipe import DemoRecipe, run_recipe
from mindvideo.train.stages import (
    STAGES,
    ClipConfig,
    ContrastiveConfig,
    CotrainConfig,
    MBMConfig,
    Stage,
    UNetTextConfig,
    VAEConfig,
)
from mindvideo.train.trainer import Trainer, train


def resolve_config(
    stage: str,
    *,
    config_path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] = (),
    validate: bool = True,
) -> StageConfig:
    """A stage's config from a file or a preset (exactly one), with ``KEY=VALUE`` overrides; ``validate`` checks
    ranges and required inputs (off to print a preset whose paths are still to be set)."""
    if stage not in STAGES:
        raise MindVideoError(f"expected a stage among {list(STAGES)}", repr(stage), "pick one")
    if (config_path is None) == (preset is None):
        raise MindVideoError("expected --config FILE or --preset NAME", "both or neither", "give exactly one")
    cls = STAGES[stage].config_class
    if config_path is not None:
        config = cls.from_dict(read_json(config_path), source=str(config_path), validate=False)
    else:
        config = cls.from_preset(preset)
    values = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    config = config.apply_overrides(values, validate=False) if values else config
    if validate:
        config.validate()
    return config


def run_stage(
    stage: str,
    config: StageConfig,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train one stage, in this process or as one rank of a torchrun job. Returns ``is_main``, ``step`` and the
    final metrics."""
    from mindvideo.train.distributed import init_distributed, shutdown

    info = init_distributed(config.train.device)
    try:
        trainer = Trainer(STAGES[stage](config, data, info), out, resume=resume)
        metrics = trainer.fit(stop_at=stop_at)
    finally:
        shutdown()
    return {"is_main": info.is_main, "step": trainer.step, "metrics": metrics}


__all__ = [
    "STAGES",
    "ClipConfig",
    "ContrastiveConfig",
    "CotrainConfig",
    "DemoRecipe",
    "MBMConfig",
    "Stage",
    "StageConfig",
    "TrainConfig",
    "Trainer",
    "UNetTextConfig",
    "VAEConfig",
    "resolve_config",
    "run_recipe",
    "run_stage",
    "train",
]
