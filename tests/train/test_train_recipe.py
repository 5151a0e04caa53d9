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
