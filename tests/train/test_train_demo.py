"""``mindvideo demo`` with the built-in model (fast options) and the assets it needs."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.demo import default_assets


def test_built_in_assets_are_complete_and_small():
    assets = default_assets()
    record = json.loads((assets / "recipe.json").read_text())
    for name in record["files"]:
        assert (assets / name).is_file(), name
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size < 6 * 2**20, f"{size / 2**20:.1f} MiB"  # teacher, student UNet and tiny decoder
    assert record["recipe"]["seed"] == 0 and record["versions"]["torch"]


def test_demo_command_writes_clips_and_metrics(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--clips", "3", "--steps", "2", "--no-mp4"])
    assert result.exit_code == 0, result.output
    assert "video 2-way top-1" in result.output and "ridge" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["clips"] == 3
    assert set(metrics) >= {"reconstruction", "student", "ridge", "ground_truth", "chance", "n_ways"}
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["clip_000.gif", "clip_001.gif", "clip_002.gif"]
    assert (out / "all_clips.gif").is_file() and (out / "pred.npy").is_file() and (out / "gt.npy").is_file()


def test_demo_refuses_bad_options_without_writing(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--clips", "0"])
    assert result.exit_code == 2 and "expected --clips ≥ 1" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--student-steps", "0"])
    assert result.exit_code == 2 and "expected --student-steps ≥ 1" in result.output
    assert not out.exists()


def test_student_checkpoint_is_the_teacher_with_the_student_unet(tmp_path):
    from mindvideo.demo import student_checkpoint
    from mindvideo.pipeline import MindVideoPipeline

    assets = default_assets()
    folder = student_checkpoint(assets, tmp_path / "student")
    for name in ("fmri_encoder", "vae", "data_transform", "tiny_decoder"):
        for path in (assets / "checkpoint" / name).iterdir():
            assert (folder / name / path.name).read_bytes() == path.read_bytes(), path
    for path in (assets / "student" / "unet").iterdir():
        assert (folder / "unet" / path.name).read_bytes() == path.read_bytes(), path
    pipe = MindVideoPipeline.from_pretrained(folder)
    assert pipe.is_student and pipe.unet.config.schedulers == ("lcm",)
    assert not MindVideoPipeline.from_pretrained(assets / "checkpoint").is_student
