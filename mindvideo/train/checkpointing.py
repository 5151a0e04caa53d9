"""Resumable training state and stage outputs.

A stage's output folder::

    OUT/stage.json                     stage name, status (running | finished), step, data, versions
    OUT/config.json                    the stage config (``mindvideo train <stage> --config OUT/config.json``)
    OUT/metrics.csv                    step, split, metric, value (long format)
    OUT/tensorboard/                   event files (only when tensorboard is installed)
    OUT/samples/                       validation grids (GIF / PNG)
    OUT/checkpoints/step-0000100/      resumable state: trainable.safetensors, ema.safetensors, optimizer.pt,
                                       scheduler.pt, rng.pt (every rank's RNG states), trainer.json
    OUT/model/                         the exported networks (EMA weights when EMA is on), e.g. model/unet/

A later stage names an earlier stage's output (or any folder holding the component) and :func:`resolve_component`
finds the component in it, refusing an output of the wrong stage with a clear message.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder
from mindvideo.train.distributed import DistInfo, barrier, gather_objects, unwrap

log = logging.getLogger(__name__)

FORMAT = "mindvideo.train/1"
STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------------------------------- stage outputs


def read_stage(folder: str | Path) -> dict[str, Any] | None:
    """``stage.json`` of a training output, or None for any other folder."""
    path = Path(folder) / "stage.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MindVideoError(f"expected a readable {path}", str(exc), "remove the broken training output") from None
    if data.get("format") != FORMAT:
        raise MindVideoError(f"expected a training output ({FORMAT}) at {folder}", f"format {data.get('format')!r}")
    return data


def write_stage(folder: Path, payload: dict[str, Any]) -> None:
    path = folder / "stage.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **payload}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def resolve_component(path: str | Path, component: str, stages: tuple[str, ...], option: str) -> Path:
    """The folder of ``component`` (e.g. ``unet``) inside ``path``.

    ``path`` may be a finished training output of one of ``stages`` (→ ``path/model/component``), a checkpoint root
    holding ``component/``, or the component folder itself (it has a ``config.json``)."""
    root = Path(path)
    if not root.exists():
        raise MindVideoError(f"expected {option} at {root}", "no such folder", "check the path")
    stage = read_stage(root)
    if stage is not None:
        if stage.get("stage") not in stages:
            raise MindVideoError(
                f"expected {option} to be the output of stage {' or '.join(stages)}",
                f"an output of stage {stage.get('stage')!r} at {root}",
                f"pass the {stages[-1]} stage's output folder",
            )
        if stage.get("status") != "finished":
            raise MindVideoError(
                f"expected a finished {stage['stage']} run at {root}",
                f"status {stage.get('status')!r} (step {stage.get('step')})",
                f"resume it: mindvideo train {stage['stage']} --resume --out {root} …",
            )
        root = root / "model"
    for candidate in (root / component, root):
        if (candidate / "config.json").is_file():
            return candidate
    raise MindVideoError(
        f"expected a {component} folder (config.json + weights) for {option}",
        f"nothing usable at {Path(path)}",
        f"pass a {'/'.join(stages)} stage output or a {component} folder",
    )


def check_out(out: Path, resume: bool, stage: str) -> Path | None:
    """Checks ``--out`` before anything is written; returns the checkpoint to resume from (or None)."""
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise MindVideoError(
                f"expected a new or empty folder for --out {out}",
                "it has files",
                "pass --resume to continue that run, or choose another folder",
            )
        return None
    info = read_stage(out)
    if info is None:
        raise MindVideoError(f"expected a training output to resume at {out}", "no stage.json", "drop --resume")
    if info.get("stage") != stage:
        raise MindVideoError(
            f"expected a checkpoint of stage {stage!r} to resume in {out}",
            f"a checkpoint of stage {info.get('stage')!r}",
            f"resume it with `mindvideo train {info.get('stage')}`, or choose another --out",
        )
    latest = latest_checkpoint(out)
    if latest is None:
        raise MindVideoError(f"expected a saved checkpoint in {out / 'checkpoints'}", "none", "start afresh")
    return latest


def latest_checkpoint(out: Path) -> Path | None:
    steps = [(int(m.group(1)), p) for p in (out / "checkpoints").glob("step-*") if (m := STEP_DIR.match(p.name))]
    return max(steps)[1] if steps else None


def versions() -> dict[str, str]:
    """Library versions and the platform, recorded next to every output."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__}
    for package in ("numpy", "diffusers", "transformers", "tokenizers", "scikit-learn", "safetensors", "mindvideo"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


# --------------------------------------------------------------------------------------------------- training state


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in unwrap(model).named_parameters() if p.requires_grad]


def evolving_names(model: nn.Module) -> list[str]:
    """State-dict keys of frozen state that still changes during training (e.g. an EMA target network), declared by
    the objective's ``evolving_state`` prefixes; saved with the trainable parameters so a run resumes exactly."""
    prefixes = tuple(getattr(unwrap(model), "evolving_state", ()))
    return [k for k in unwrap(model).state_dict() if prefixes and k.startswith(prefixes)]


def _full_options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU/CUDA, numpy, random) in ``torch.load(weights_only=True)``-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    out: Path, step: int, trainer: dict[str, Any], parts: dict[str, Any], info: DistInfo, keep: int
) -> Path:
    """Write ``checkpoints/step-N`` (collective: every rank calls; rank 0 writes) and prune old ones."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model, optimizer = parts["model"], parts["optimizer"]
    names = set(trainable_names(model)) | set(evolving_names(model))
    weights = get_model_state_dict(model, options=_full_options())
    optim = get_optimizer_state_dict(model, optimizer, options=_full_options())
    ema = parts["ema"].state_dict() if parts["ema"] is not None else None
    rngs = gather_objects(rng_state())
    folder = out / "checkpoints" / f"step-{step:07d}"
    if info.is_main:
        with atomic_folder(folder) as tmp:
            trainable = {k: v.contiguous() for k, v in weights.items() if k in names}
            save_file(trainable, str(tmp / "trainable.safetensors"))
            if ema is not None:
                save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
            torch.save(optim, tmp / "optimizer.pt")
            torch.save(parts["scheduler"].state_dict(), tmp / "scheduler.pt")
            torch.save(rngs, tmp / "rng.pt")
            payload = {**trainer, "step": step, "world_size": info.world_size}
            (tmp / "trainer.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        _prune(out / "checkpoints", keep)
    barrier()
    return folder


def _prune(folder: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_state(folder: Path, parts: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Restore model, optimiser, LR schedule, EMA and (same world size) RNG states; returns ``trainer.json``."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    trainer = json.loads((folder / "trainer.json").read_text(encoding="utf-8"))
    model = parts["model"]
    weights = load_file(str(folder / "trainable.safetensors"))
    missing = (set(trainable_names(model)) | set(evolving_names(model))) - set(weights)
    if missing:
        raise MindVideoError(
            f"expected the checkpoint {folder} to hold every trainable parameter of this stage",
            f"missing {sorted(missing)[:4]}",
            "resume with the config the run started with (OUT/config.json)",
        )
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    optim = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, parts["optimizer"], optim, options=options)
    parts["scheduler"].load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if parts["ema"] is not None and (folder / "ema.safetensors").is_file():
        parts["ema"].load_state_dict(load_file(str(folder / "ema.safetensors")))
    rngs = torch.load(folder / "rng.pt", weights_only=True)
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        log.warning(
            "resuming on %d processes from a %d-process checkpoint: RNG states not restored",
            info.world_size,
            len(rngs),
        )
    return trainer
