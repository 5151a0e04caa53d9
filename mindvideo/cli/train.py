"""``mindvideo train``: the progressive training stages, one command each, and the small-data recipe.

Every stage command takes ``--config FILE`` or ``--preset NAME`` (then ``--set KEY=VALUE`` overrides), ``--data``
(a prepared folder) and ``--out`` (a new folder, or an old one with ``--resume``). Multi-process runs go through
torchrun, e.g. ``torchrun --nproc_per_node 2 -m mindvideo train mbm …`` (or ``torchrun --no-python mindvideo train
mbm …``).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from mindvideo.cli.group import Group
from mindvideo.errors import MindVideoError


def _table(rows: list[tuple[str, object]], title: str | None = None) -> None:
    if title:
        click.echo(title)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        click.echo(f"  {key:<{width}}  {text}")


def _quiet_libraries() -> None:
    """transformers' weight-loading progress bars would interleave with ours."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is only needed by the CLIP stages
        pass


@click.group("train", cls=Group)
def train() -> None:
    """Train MinD-Video progressively: mbm → contrastive → unet-text → cotrain (plus vae and clip for small data),
    then distill a few-step student (distill --mode guidance, then --mode consistency).

    \b
    Example:
      mindvideo train recipe demo --out runs/demo            # every stage on simulated data, CPU, minutes
      mindvideo train mbm --preset demo --data prepared/ --out runs/mbm
      mindvideo train cotrain --config cotrain.json --data prepared/ --out runs/cotrain --resume
      mindvideo train distill --mode guidance --preset demo --data prepared/ --out runs/dg --set teacher=runs/cotrain
      torchrun --nproc_per_node 2 -m mindvideo train mbm --preset demo --data prepared/ --out runs/mbm
    """
    _quiet_libraries()


def _stage_command(name: str) -> click.Command:
    from mindvideo.train.stages import STAGES

    stage = STAGES[name]
    presets = click.Choice(list(stage.config_class.preset_names))

    @click.command(name, help=f"{stage.summary}\n\n" + _EXAMPLES.get(name, _EXAMPLE).format(name=name))
    @click.option("--config", "config_path", type=click.Path(path_type=Path), help="Stage config JSON.")
    @click.option("--preset", type=presets, help="A built-in config: tiny (tests), demo (small data), reference.")
    @click.option("--data", type=click.Path(path_type=Path), help="Prepared data folder (`mindvideo data prepare`).")
    @click.option("--out", type=click.Path(path_type=Path), help="Output folder (new, or existing with --resume).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
    @click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
    @click.option("--stop-at", type=int, help="Save and stop after this step (resume later with --resume).")
    @click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
    def command(config_path, preset, data, out, overrides, resume, stop_at, print_config, mode=None) -> None:
        from mindvideo.train import resolve_config, run_stage

        overrides = (f"mode={mode}", *overrides) if mode else overrides
        config = resolve_config(
            name, config_path=config_path, preset=preset, overrides=overrides, validate=not print_config
        )
        if print_config:
            click.echo(json.dumps(config.to_dict(), indent=2))
            return
        if data is None or out is None:
            raise MindVideoError("expected --data and --out", "one of them missing", f"see mindvideo train {name} -h")
        result = run_stage(name, config, data, out, resume=resume, stop_at=stop_at)
        if result["is_main"]:
            rows = [("stage", name), ("step", result["step"]), *result["metrics"].items(), ("output", out)]
            _table(rows, title=f"mindvideo train {name}")

    if name == "distill":
        from mindvideo.train.stages.distill import MODES

        command = click.option(
            "--mode",
            type=click.Choice(MODES),
            help="guidance: one pass with g as an input; consistency: LCM, few steps (sets the config's mode).",
        )(command)
    return command


_EXAMPLE = """\b
Example:
  mindvideo train {name} --preset demo --data prepared/ --out runs/{name}
  mindvideo train {name} --preset demo --print-config > {name}.json
  mindvideo train {name} --config {name}.json --data prepared/ --out runs/{name} --set train.steps=100"""

_EXAMPLES = {
    "distill": """\b
Example:
  mindvideo train distill --mode guidance --preset demo --data prepared/ --out runs/distill-guidance \\
      --set teacher=runs/cotrain
  mindvideo train distill --mode consistency --preset demo --data prepared/ --out runs/distill-consistency \\
      --set teacher=runs/distill-guidance
  mindvideo generate --checkpoint runs/distill-consistency/model --fmri w.npy --scheduler lcm --steps 4 --out x.mp4"""
}


@train.command("recipe")
@click.argument("name", type=click.Choice(["demo"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Recipe folder (rerun to continue).")
@click.option("--quick", is_flag=True, help="Tiny data and the tiny presets: a smoke run in about a minute.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="Stage override (repeatable).")
@click.option(
    "--export-assets",
    type=click.Path(path_type=Path),
    help="Also package the result as demo assets here (a new or empty folder, or earlier assets: replaced).",
)
def recipe(name: str, out: Path, quick: bool, overrides: tuple[str, ...], export_assets: Path | None) -> None:
    """Run the small-data recipe: simulate → prepare → vae → clip → mbm → contrastive → unet-text → cotrain →
    distill-guidance → distill-consistency.

    The result, OUT/cotrain/model, is a checkpoint MindVideoPipeline loads (with data_transform/), and
    OUT/distill-consistency/model its few-step student (LCM, 4 steps, one UNet pass each); OUT/recipe.json
    records every config, seed, version, duration and loss curve. With --export-assets the checkpoint, a held-out
    test set, the ridge baseline's training data and the evaluation classifier are packaged for `mindvideo demo`.

    \b
    Example:
      mindvideo train recipe demo --out runs/demo
      mindvideo train recipe demo --out runs/demo --export-assets mindvideo/assets/demo
      mindvideo train recipe demo --out runs/demo --set cotrain.train.steps=2000
    """
    from mindvideo.demo import check_assets_folder
    from mindvideo.train.config import parse_overrides
    from mindvideo.train.recipe import DemoRecipe, run_recipe

    if export_assets is not None:
        check_assets_folder(export_assets)  # before hours of training

    recipe_config = DemoRecipe.quick() if quick else DemoRecipe()
    staged: dict[str, dict] = {}
    for key, value in parse_overrides(overrides).items():
        stage, _, rest = key.partition(".")
        if not rest:
            raise MindVideoError("expected --set STAGE.KEY=VALUE", key, "e.g. --set cotrain.train.steps=2000")
        staged.setdefault(stage, {})[rest] = value
    command = " ".join(["mindvideo", *map(shlex.quote, sys.argv[1:])])
    record = run_recipe(out, recipe_config.replace(overrides=staged), progress=True, command=command)
    rows = [(f"{k} loss", _curve(v)) for k, v in record["stages"].items()]
    if export_assets is not None:
        from mindvideo.demo import export_assets as package

        rows.append(("assets", package(out, export_assets)))
    _table([*rows, ("checkpoint", record["checkpoint"])], title=f"mindvideo train recipe {name}")


def _curve(summary: dict) -> str:
    points = summary["loss_curve"]
    return " → ".join(f"{p['loss']:.3g}" for p in points) + (
        f"  ({summary['seconds']} s)" if summary["seconds"] else ""
    )


for _name in ("vae", "clip", "mbm", "contrastive", "unet-text", "cotrain", "distill", "tiny-decoder"):
    train.add_command(_stage_command(_name))
