"""The tiny-decoder stage: distilled from the built-in demo checkpoint's trained VAE, its held-out distance to the VAE
decoder falls well below the untrained decoder's and the mean image's; the output is a folder the pipeline uses;
a resumed run equals an uninterrupted one; bad inputs are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_helpers import assert_same_weights, config, listing, run

from mindvideo.cli import main
from mindvideo.errors import MindVideoError
from mindvideo.models.tiny_decoder import TinyDecoder
from mindvideo.train import run_stage
from mindvideo.train.stages import TinyDecoderStage
from mindvideo.train.stages.tiny_decoder import to_signed
from mindvideo.train.tracking import read_metrics

DEMO = Path(__file__).resolve().parents[2] / "mindvideo" / "assets" / "demo" / "checkpoint"
TRAIN = {"vae": str(DEMO), "train.steps": 150, "train.batch_size": 16, "train.log_every": 50}


@pytest.fixture(scope="module")
def distilled(prepared, tmp_path_factory) -> Path:
    return run("tiny-decoder", prepared, tmp_path_factory.mktemp("tiny-decoder") / "run", TRAIN)


def heldout_l1(stage: TinyDecoderStage, decoder: TinyDecoder) -> float:
    with torch.no_grad():
        pred = decoder(torch.from_numpy(stage.val_latents))
    return float((pred - to_signed(torch.from_numpy(stage.val_targets))).abs().mean())


def test_loss_falls_with_a_margin_on_held_out_frames(prepared, distilled):
    torch.manual_seed(0)  # the trainer's seed: the same initial decoder as the run started from
    stage = TinyDecoderStage(config("tiny-decoder", TRAIN), prepared)
    before = heldout_l1(stage, stage.build().decoder)
    after = heldout_l1(stage, TinyDecoder.from_pretrained(distilled / "model" / "tiny_decoder"))
    targets = to_signed(torch.from_numpy(stage.val_targets))
    mean_image = float((targets - targets.mean(0, keepdim=True)).abs().mean())  # the held-out mean, no latents
    print(f"held-out L1 to the VAE decoder: untrained {before:.4f}, trained {after:.4f}, mean image {mean_image:.4f}")
    assert after < 0.7 * before
    assert after < mean_image


def test_output_and_metrics(distilled):
    info = json.loads((distilled / "stage.json").read_text())
    assert info["stage"] == "tiny-decoder" and info["status"] == "finished" and info["step"] == 150
    assert info["inputs"]["decoder"]["channels"] == [8, 8, 4]  # for_vae: the demo VAE has 3 levels → 4×
    assert sorted(p.name for p in (distilled / "model" / "tiny_decoder").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "weights.sha256",
    ]
    metrics = read_metrics(distilled / "metrics.csv")
    assert [s for s, _ in metrics["train/loss"]] == [1, 50, 100, 150]
    assert metrics["train/loss"][-1][1] < metrics["train/loss"][0][1]
    assert metrics["val/psnr_to_vae"][-1][1] > 15.0
    assert list((distilled / "samples").glob("tiny-decoder-step*.gif"))


def test_resume_reaches_the_uninterrupted_weights(prepared, tmp_path):
    overrides = {"vae": str(DEMO), "train.steps": 4, "train.ema_decay": 0.5}
    whole = run("tiny-decoder", prepared, tmp_path / "whole", overrides)
    run("tiny-decoder", prepared, tmp_path / "parts", overrides, stop_at=2)
    assert json.loads((tmp_path / "parts" / "stage.json").read_text())["status"] == "stopped"
    run("tiny-decoder", prepared, tmp_path / "parts", overrides, resume=True)
    assert_same_weights(whole / "model", tmp_path / "parts" / "model")


def test_cli_trains_and_refuses_a_missing_vae(prepared, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "tiny-decoder", "--preset", "tiny", "--data", str(prepared), "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "expected vae (the checkpoint" in result.output
    assert not out.exists()
    result = runner.invoke(main, [*args, "--set", f"vae={DEMO}", "--set", "train.threads=1"])
    assert result.exit_code == 0, result.output
    assert (out / "model" / "tiny_decoder" / "config.json").is_file()


def test_a_decoder_that_does_not_fit_the_vae_is_refused(prepared, tmp_path):
    overrides = {"vae": str(DEMO), "decoder": {"channels": [8, 8, 8, 8], "layers_per_block": [1, 1, 1, 1]}}
    with pytest.raises(MindVideoError, match="expected a tiny decoder for 4 latent channels and 4× upsampling"):
        run_stage("tiny-decoder", config("tiny-decoder", overrides), prepared, tmp_path / "bad")
    assert listing(tmp_path / "bad") == []
    with pytest.raises(MindVideoError, match="expected loss among"):
        config("tiny-decoder", {"vae": str(DEMO), "loss": "huber"})


def test_frame_weight_adds_the_distance_to_the_true_frame(prepared):
    torch.manual_seed(0)
    stage = TinyDecoderStage(config("tiny-decoder", {"vae": str(DEMO), "frame_weight": 0.5}), prepared)
    objective = stage.build()
    batch = {k: torch.from_numpy(np.array(v[:4])) for k, v in stage.train_set.arrays.items()}
    loss, logs = objective(batch, None)
    torch.testing.assert_close(loss, logs["to_vae"] + 0.5 * logs["to_frame"])
    assert logs["to_frame"] != logs["to_vae"]
