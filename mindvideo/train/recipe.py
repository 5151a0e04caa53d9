"""The small-data recipe: simulated data → every training stage → a checkpoint the pipeline loads.

``mindvideo train recipe demo --out DIR`` runs::

    simulate → prepare → vae → clip → mbm → contrastive → unet-text → cotrain → distill-guidance
             → distill-consistency → calibrate

into ``DIR/{sim, prepared, vae, clip, mbm, contrastive, unet-text, cotrain, distill-guidance, distill-consistency,
classifier}``; ``DIR/cotrain/model`` is the final checkpoint (with ``data_transform/``) and
``DIR/distill-consistency/model`` its few-step student (``mindvideo train distill``: guidance distillation, then
latent consistency distillation from the guidance student). Each stage uses its ``demo`` preset (``tiny`` with
``quick=True``) wired to the outputs before it. :func:`calibrate` fits the evaluation classifier and picks the
demo's guidance scale on the first test segment (validation data the demo's test set leaves out). Rerunning the
recipe skips finished stages and resumes an interrupted one, so a killed run continues where it stopped.
``DIR/recipe.json`` records the command, the recipe, every resolved stage config, seeds, versions, durations,
each stage's loss curve summary and the calibration, which is what makes the built-in demo model reproducible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import Config
from mindvideo.errors import MindVideoError
from mindvideo.train.checkpointing import latest_checkpoint, read_stage, versions
from mindvideo.train.config import RUN_KEYS
from mindvideo.train.stages import STAGES
from mindvideo.train.tracking import read_metrics

log = logging.getLogger(__name__)

RECIPE_STAGES = (
    "vae", "clip", "mbm", "contrastive", "unet-text", "cotrain", "distill-guidance", "distill-consistency"
)  # fmt: skip
# recipe steps that run a stage under another name: (stage, fixed settings)
STAGE_OF = {
    "distill-guidance": ("distill", {"mode": "guidance"}),
    "distill-consistency": ("distill", {"mode": "consistency"}),
}

# recipe steps that train longer than their stage's preset, per recipe preset: the demo student's consistency
# distillation runs 1350 steps (its validation sample MSE to the teacher: 0.337 after the preset's 450, 0.273)
PRESET_STEPS = {("demo", "distill-consistency"): 1350}


def stage_name(step: str) -> str:
    """The training stage a recipe step runs (``distill-guidance`` → ``distill``)."""
    return STAGE_OF.get(step, (step, {}))[0]


@dataclasses.dataclass
class DemoRecipe(Config):
    """The data and schedule of the built-in demo model. ``overrides``: per-stage ``--set`` style dicts."""

    grid: tuple[int, int, int] = (16, 16, 12)
    classes: int = 10
    train_segments: int = 12
    test_segments: int = 2
    segment_trs: int = 40
    size: int = 32
    fps: float = 3.0
    lag: int = 2  # TRs: the simulated HRF peaks at 5 s, so window t starts 2 TRs after stimulus TR t
    seed: int = 0
    preset: str = "demo"
    threads: int = 1
    sampling_steps: int = 25  # the demo's DDIM steps; its guidance scale is chosen among the candidates
    guidance_candidates: tuple[float, ...] = (2.0, 3.0, 5.0, 7.5, 12.5)
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def quick(cls) -> DemoRecipe:
        """Seconds per stage: the tiny simulated dataset and the ``tiny`` presets (tests, smoke runs)."""
        return cls(
            grid=(12, 12, 8),
            train_segments=6,
            test_segments=2,
            segment_trs=20,
            preset="tiny",
            sampling_steps=4,
            guidance_candidates=(2.0, 5.0),
        )


def stage_inputs(name: str, root: Path) -> dict[str, Any]:
    """How a stage is wired to the outputs before it."""
    return {
        "vae": {},
        "clip": {},
        "mbm": {},
        "contrastive": {"clip": str(root / "clip"), "init_encoder": str(root / "mbm")},
        "unet-text": {"vae": str(root / "vae"), "text_encoder": str(root / "clip")},
        "cotrain": {
            "vae": str(root / "vae"),
            "init_encoder": str(root / "contrastive"),
            "init_unet": str(root / "unet-text"),
        },
        "distill-guidance": {"teacher": str(root / "cotrain")},
        "distill-consistency": {"teacher": str(root / "distill-guidance")},
    }[name]


def stage_config(name: str, recipe: DemoRecipe, root: Path):
    """The resolved config of one recipe stage."""
    stage = STAGES[stage_name(name)]
    fixed = STAGE_OF.get(name, (name, {}))[1]
    overrides = {**fixed, **stage_inputs(name, root), "train.seed": recipe.seed, "train.threads": recipe.threads}
    if recipe.preset == "tiny" and name == "contrastive":
        overrides["init_encoder"] = None  # the tiny presets' encoders differ in depth
    if (recipe.preset, name) in PRESET_STEPS:
        overrides["train.steps"] = PRESET_STEPS[recipe.preset, name]
    overrides.update(recipe.overrides.get(name, {}))
    return stage.config_class.from_preset(recipe.preset).apply_overrides(overrides)


def run_recipe(
    out: str | Path, recipe: DemoRecipe | None = None, *, progress: bool = True, command: str | None = None
) -> dict[str, Any]:
    """Run (or continue) the recipe into ``out``; returns the record written to ``out/recipe.json`` (``command``:
    how it was started, recorded for reproduction)."""
    from mindvideo.train.trainer import train

    root, recipe = Path(out), recipe or DemoRecipe()
    configs = {name: stage_config(name, recipe, root) for name in RECIPE_STAGES}  # every config checked up front
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"command": command, "recipe": recipe.to_dict(), "versions": versions(), "stages": {}}
    tic = time.perf_counter()
    record["data"] = _data(root, recipe, progress)
    record["data"]["seconds"] = round(time.perf_counter() - tic, 1)
    for name in RECIPE_STAGES:
        stage_out, status = root / name, (read_stage(root / name) or {}).get("status")
        if status is not None and status != "finished" and latest_checkpoint(stage_out) is None:
            log.warning("recipe: %s was interrupted before its first checkpoint; starting it again", name)
            shutil.rmtree(stage_out)
            status = None
        if status is not None:
            _check_same_config(stage_out, configs[name])
        if status != "finished":
            resume = status is not None
            log.info("recipe: %s %s", "resuming" if resume else "running", name)
            train(STAGES[stage_name(name)](configs[name], root / "prepared"), stage_out, resume=resume)
        record["stages"][name] = _summary(stage_out, configs[name])
    record["calibration"] = calibrate(root, recipe)
    record["checkpoint"] = str(root / "cotrain" / "model")
    record["student"] = str(root / "distill-consistency" / "model")
    (root / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _data(root: Path, recipe: DemoRecipe, progress: bool) -> dict[str, Any]:
    """Simulate and prepare (each skipped when its folder is complete)."""
    from mindvideo.data import PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
    from mindvideo.data.prepare import resolve_loading

    sim = SimConfig(
        grid=recipe.grid,
        classes=recipe.classes,
        train_segments=recipe.train_segments,
        test_segments=recipe.test_segments,
        segment_trs=recipe.segment_trs,
        size=recipe.size,
        seed=recipe.seed,
        formats=("cifti",),
    )
    if not (root / "sim" / "dataset.json").is_file():
        simulate(root / "sim", sim, progress=progress)
    config = PrepareConfig(layout="wen", fps=recipe.fps, size=recipe.size)
    preprocess = preprocess_defaults("wen", lag=recipe.lag)
    if not (root / "prepared" / "summary.json").is_file():
        prepare(
            root / "sim",
            root / "prepared",
            config=config,
            preprocess=preprocess,
            loading=resolve_loading(root / "sim", config),
            progress=progress,
        )
    summary = json.loads((root / "prepared" / "summary.json").read_text(encoding="utf-8"))
    return {
        "simulate": sim.to_dict(),
        "prepare": config.to_dict(),
        "preprocess": preprocess.to_dict(),
        "counts": summary["counts"],
        "voxels": summary["voxels"],
    }


def calibrate(root: Path, recipe: DemoRecipe) -> dict[str, Any]:
    """Fit the evaluation classifier and choose the demo's guidance scale on validation data.

    The classifier (:class:`~mindvideo.eval.PixelClassifier`) learns the simulated classes from the training frames
    (``root/classifier``). Every candidate scale reconstructs the windows of the *first* test segment — which the
    demo's test set leaves out — and the scale whose clips the classifier assigns to their true class most often
    wins (ties: the smaller scale)."""
    from mindvideo.demo import clip_labels, reconstruct, validation_windows
    from mindvideo.eval import PixelClassifier
    from mindvideo.pipeline import GenerationConfig
    from mindvideo.train.data import load_split

    labels = json.loads((root / "sim" / "truth" / "labels.json").read_text(encoding="utf-8"))
    train, test = load_split(root / "prepared", "train", video=True), load_split(root / "prepared", "test", video=True)
    if not (root / "classifier" / "config.json").is_file():
        n, f = train.video.shape[:2]
        frames, classes = np.asarray(train.video).reshape(n * f, *train.video.shape[2:]), clip_labels(train, labels)
        names = json.loads((root / "sim" / "dataset.json").read_text(encoding="utf-8"))["classes"]
        PixelClassifier.fit(frames, np.repeat(classes, f), size=16, class_names=list(names)).save(root / "classifier")
    classifier = PixelClassifier.load(root / "classifier")
    index = validation_windows(test)
    truth = clip_labels(test, labels)[index]
    scores = {}
    for scale in recipe.guidance_candidates:
        config = GenerationConfig(
            num_frames=int(test.video.shape[1]),
            num_inference_steps=recipe.sampling_steps,
            guidance_scale=scale,
            seed=recipe.seed,
        )
        video = reconstruct(root / "cotrain" / "model", np.asarray(test.fmri[index]), config, progress=False)
        probs = classifier(video.reshape(-1, *video.shape[2:])).reshape(len(video), video.shape[1], -1).mean(axis=1)
        scores[str(scale)] = round(float((probs.argmax(axis=1) == truth).mean()), 4)
    best = max(recipe.guidance_candidates, key=lambda g: (scores[str(g)], -g))
    log.info("recipe: guidance %s chosen on %d validation windows (%s)", best, len(index), scores)
    return {
        "validation": f"{len(index)} windows of segment {test.segments[test.index[index[0], 0]]}",
        "criterion": "classifier top-1 of the reconstructed clips",
        "scores": scores,
        "guidance": best,
    }


def _check_same_config(out: Path, config) -> None:
    """A stage output kept from an earlier run must come from the same config (up to logging, checkpoint frequency
    and threads)."""
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    now = json.loads(json.dumps(config.to_dict()))
    for data in (saved, now):
        data["train"] = {k: v for k, v in data["train"].items() if k not in RUN_KEYS or k == "steps"}
    if saved != now:
        raise MindVideoError(
            f"expected the recipe's config for the stage output {out}",
            "a different config.json (the recipe or its --set options changed)",
            f"remove {out} to retrain that stage, or run the recipe into a new folder",
        )


def _summary(out: Path, config) -> dict[str, Any]:
    """Config, time and loss curve (first, middle, last logged values) of one stage."""
    stage = read_stage(out)
    if stage is None or stage.get("status") != "finished":
        raise MindVideoError(f"expected a finished stage at {out}", str(stage and stage.get("status")), "rerun")
    metrics = read_metrics(out / "metrics.csv")
    loss = metrics.get("train/loss", [])
    curve = [loss[0], loss[len(loss) // 2], loss[-1]] if loss else []
    return {
        "config": config.to_dict(),
        "seconds": stage.get("seconds"),
        "loss_curve": [{"step": s, "loss": round(v, 5)} for s, v in curve],
        "validation": {k: v for k, v in stage.get("metrics", {}).items() if k.startswith("val_")},
    }
