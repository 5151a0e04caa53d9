"""The small-data recipe end to end (``--quick``: tiny data, tiny presets), through the CLI; rerunning it skips
the finished stages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.pipeline import MindVideoPipeline

STAGES = ["vae", "clip", "mbm", "contrastive", "unet-text", "cotrain", "distill-guidance", "distill-consistency"]


@pytest.mark.slow
def test_quick_recipe_runs_every_stage_into_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "recipe"
    result = CliRunner().invoke(main, ["train", "recipe", "demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "recipe.json").read_text())
    assert list(record["stages"]) == STAGES
    assert all(stage["loss_curve"] for stage in record["stages"].values())
    pipe = MindVideoPipeline.from_pretrained(out / "cotrain" / "model")
    assert pipe.num_voxels == record["data"]["voxels"]["model"]
    student = MindVideoPipeline.from_pretrained(record["student"])
    assert student.is_student and student.unet.config.schedulers == ("lcm",)
    again = CliRunner().invoke(main, ["train", "recipe", "demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "recipe.json").read_text())["stages"] == record["stages"]


def test_the_demo_recipe_runs_consistency_distillation_longer_than_the_preset(tmp_path):
    from mindvideo.train.recipe import DemoRecipe, stage_config

    demo = DemoRecipe()
    assert stage_config("distill-guidance", demo, tmp_path).train.steps == 450  # the stage's demo preset
    assert stage_config("distill-consistency", demo, tmp_path).train.steps == 1350
    assert stage_config("distill-consistency", DemoRecipe.quick(), tmp_path).train.steps == 3  # tiny preset as is
    mine = DemoRecipe(overrides={"distill-consistency": {"train.steps": 600}})
    assert stage_config("distill-consistency", mine, tmp_path).train.steps == 600  # the user's override wins
