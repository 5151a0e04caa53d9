"""User mistakes: bad configs, data folders of the wrong kind, outputs of another stage. Each gives one clear
MindVideoError (exit 2 and one ``error:`` line from the CLI) and writes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from train_helpers import config, listing

from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.train import run_stage


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=-1"], "expected train.lr > 0"),
        (["--set", "encoder.depthh=2"], "unknown ['depthh']"),
        (["--set", "train.batch_size=3", "--set", "train.grad_accum=2"], "divisible by train.grad_accum"),
        (["--set", "mask_ratio=yes"], "mask_ratio to be float"),
    ],
)
def test_bad_config_values(prepared, tmp_path, args, message):
    out = tmp_path / "out"
    assert_refused(cli("train", "mbm", "--preset", "tiny", "--data", prepared, "--out", out, *args), message)
    assert not out.exists()


def test_bad_config_files(prepared, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps(config("vae").to_dict()))
    out = tmp_path / "out"
    assert_refused(cli("train", "mbm", "--config", tmp_path / "broken.json", "--data", prepared, "--out", out), "JSON")
    result = cli("train", "mbm", "--config", tmp_path / "other.json", "--data", prepared, "--out", out)
    assert_refused(result, "expected a config of stage 'mbm'")
    assert_refused(cli("train", "mbm", "--data", prepared, "--out", out), "--config FILE or --preset NAME")
    assert not out.exists()


def test_data_folders_of_the_wrong_kind(sim_root, tmp_path):
    out = tmp_path / "out"
    result = cli("train", "mbm", "--preset", "tiny", "--data", sim_root, "--out", out)
    assert_refused(result, "found a raw dataset")
    assert_refused(
        cli("train", "vae", "--preset", "tiny", "--data", tmp_path / "nope", "--out", out), "no such folder"
    )
    hcp = tmp_path / "hcp"
    (hcp / "train" / "runs").mkdir(parents=True)
    assert_refused(cli("train", "vae", "--preset", "tiny", "--data", hcp, "--out", out), "an HCP pre-training folder")
    assert not out.exists()


def test_outputs_of_another_stage_are_refused(prepared, runs, tmp_path):
    out = tmp_path / "out"
    mbm = runs("mbm")
    args = ["--preset", "tiny", "--data", prepared, "--out", out]
    result = cli(
        "train",
        "cotrain",
        *args,
        "--set",
        f"vae={runs('vae')}",
        "--set",
        f"init_encoder={runs('contrastive')}",
        "--set",
        f"init_unet={mbm}",
    )
    assert_refused(result, "expected init_unet to be the output of stage unet-text or cotrain")
    assert_refused(
        cli("train", "mbm", "--preset", "tiny", "--data", prepared, "--out", runs("vae"), "--resume"),
        "expected a checkpoint of stage 'mbm'",
    )
    assert not out.exists()


def test_existing_output_needs_resume_and_resume_needs_a_run(prepared, runs, tmp_path):
    before = listing(runs("mbm"))
    assert_refused(cli("train", "mbm", "--preset", "tiny", "--data", prepared, "--out", runs("mbm")), "pass --resume")
    assert listing(runs("mbm")) == before
    (tmp_path / "empty").mkdir()
    result = cli("train", "mbm", "--preset", "tiny", "--data", prepared, "--out", tmp_path / "empty", "--resume")
    assert_refused(result, "no stage.json")


def test_bad_stop_step_is_refused(prepared, tmp_path):
    out = tmp_path / "out"
    result = cli("train", "mbm", "--preset", "tiny", "--data", prepared, "--out", out, "--stop-at", "0")
    assert_refused(result, "expected --stop-at ≥ 1")
    assert not out.exists()


def test_resuming_with_another_config_is_refused(prepared, runs):
    with pytest.raises(MindVideoError, match="expected the config the run in"):
        run_stage("mbm", config("mbm", {"mask_ratio": 0.5}), prepared, runs("mbm"), resume=True)
