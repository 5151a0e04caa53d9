"""An interrupted run resumed from its checkpoint ends with the weights of an uninterrupted run (same EMA, optimiser
state, LR schedule, data order and per-sample randomness)."""

from __future__ import annotations

import json

from train_helpers import assert_same_weights, config

from mindvideo.train import run_stage

ENGINEERING = {"train.steps": 4, "train.grad_accum": 2, "train.ema_decay": 0.9, "train.warmup_steps": 1}


def test_mbm_resume_equals_uninterrupted(prepared, tmp_path):
    cfg = config("mbm", ENGINEERING)
    run_stage("mbm", cfg, prepared, tmp_path / "straight")
    first = run_stage("mbm", cfg, prepared, tmp_path / "resumed", stop_at=2)
    assert first["step"] == 2 and json.loads((tmp_path / "resumed" / "stage.json").read_text())["status"] == "stopped"
    assert not (tmp_path / "resumed" / "model").exists()
    run_stage("mbm", cfg, prepared, tmp_path / "resumed", resume=True)
    assert_same_weights(tmp_path / "straight" / "model", tmp_path / "resumed" / "model")
    assert_same_weights(
        tmp_path / "straight" / "checkpoints" / "step-0000004", tmp_path / "resumed" / "checkpoints" / "step-0000004"
    )


def test_cotrain_resume_equals_uninterrupted(prepared, runs, tmp_path):
    inputs = {"vae": runs("vae"), "init_encoder": runs("contrastive"), "init_unet": runs("unet-text")}
    cfg = config("cotrain", {**{k: str(v) for k, v in inputs.items()}, **ENGINEERING, "train.batch_size": 4})
    run_stage("cotrain", cfg, prepared, tmp_path / "straight")
    run_stage("cotrain", cfg, prepared, tmp_path / "resumed", stop_at=3)
    run_stage("cotrain", cfg, prepared, tmp_path / "resumed", resume=True)
    assert_same_weights(tmp_path / "straight" / "model", tmp_path / "resumed" / "model", atol=1e-5)
