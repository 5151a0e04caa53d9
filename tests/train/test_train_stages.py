"""Every stage on the tiny simulated data: a few steps lower its loss on windows it did not train on by a margin, its
tiny preset trains end to end and writes what the next stage needs; the last stage's output is a checkpoint the
pipeline loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from train_helpers import config

from mindvideo.pipeline import GenerationConfig, MindVideoPipeline
from mindvideo.train import STAGES
from mindvideo.train.data import StepRandom, single_chunk
from mindvideo.train.tracking import read_metrics

INPUTS = {
    "contrastive": {"clip": "clip"},
    "unet-text": {"vae": "vae", "text_encoder": "clip"},
    "cotrain": {"vae": "vae", "init_encoder": "contrastive", "init_unet": "unet-text"},
    "distill": {"teacher": "cotrain"},
    "tiny-decoder": {"vae": "vae"},
}
COMPONENT = {"vae": "vae", "clip": "clip", "mbm": "fmri_encoder", "contrastive": "fmri_encoder", "unet-text": "unet"}


# stage → (training steps, training items, largest held-out loss after training as a share of the one before).
# Noise-prediction losses (unet-text, cotrain, distill) fall slowest on unseen clips: a few steps learn little of ε.
PLAN = {
    "vae": (8, 4, 0.8),
    "clip": (16, 8, 0.8),
    "mbm": (8, 4, 0.8),
    "contrastive": (8, 4, 0.8),
    "unet-text": (16, 4, 0.9),
    "cotrain": (24, 8, 0.9),
    "distill": (16, 4, 0.9),
    "tiny-decoder": (32, 8, 0.85),
}
# The tiny data's windows share too little stimulus signal (same-caption fMRI correlation ~0.02) for the fMRI → CLIP
# alignment to carry over to unseen windows in a few steps: contrastive is scored on its training windows, with
# draws (frame picks) other than the training ones.
SCORED_ON_TRAINING_ITEMS = {"contrastive"}
OVERRIDES = {"cotrain": {"trainable": ["all"]}}  # the attention-only default learns too slowly for a quick check


def mean_loss(objective, batch, seed: int) -> float:
    """The loss averaged over three fixed draws (noise, masks, timesteps, frames) that training never uses."""
    size = len(next(iter(batch.values())))
    with torch.no_grad():
        return sum(float(objective(batch, StepRandom(seed, single_chunk(size, step)))[0]) for step in range(3)) / 3


def test_every_stage_has_a_plan():
    assert set(PLAN) == set(STAGES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_loss_falls_with_a_margin_on_held_out_items(stage, prepared, runs):
    steps, count, margin = PLAN[stage]
    inputs = {key: str(runs(value)) for key, value in INPUTS.get(stage, {}).items()}
    torch.manual_seed(0)
    task = STAGES[stage](config(stage, {**inputs, **OVERRIDES.get(stage, {})}), prepared)
    objective = task.build()
    dataset = task.dataset()
    train = default_collate([dataset[i] for i in range(count)])
    scored = range(4) if stage in SCORED_ON_TRAINING_ITEMS else range(len(dataset) - 4, len(dataset))
    assert stage in SCORED_ON_TRAINING_ITEMS or min(scored) >= count
    heldout = default_collate([dataset[i] for i in scored])
    lr = 2e-4 if stage == "distill" else 2e-3  # a student starts at its teacher: a fine-tuning rate
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=lr)
    before = mean_loss(objective, heldout, seed=1)
    for step in range(steps):
        objective(train, StepRandom(0, single_chunk(count, step)))[0].backward()  # fresh draws every step
        optimizer.step()
        optimizer.zero_grad()
    after = mean_loss(objective, heldout, seed=1)
    print(f"{stage}: held-out loss {before:.4f} → {after:.4f} ({after / before:.2f} ×)")
    assert after < margin * before, f"{stage}: held-out loss {before:.4f} → {after:.4f}, expected < {margin} ×"


@pytest.mark.parametrize("stage", list(COMPONENT))
def test_tiny_preset_trains_and_exports(stage, runs):
    out = runs(stage)
    info = json.loads((out / "stage.json").read_text())
    assert info["stage"] == stage and info["status"] == "finished" and info["step"] == 3
    assert (out / "model" / COMPONENT[stage] / "config.json").is_file()
    metrics = read_metrics(out / "metrics.csv")
    assert [s for s, _ in metrics["train/loss"]] == [1, 2, 3]
    assert all(np.isfinite(v) for _, v in metrics["train/loss"])
    assert any(k.startswith("val/") for k in metrics)
    assert (out / "checkpoints" / "step-0000003" / "trainable.safetensors").is_file()


def test_video_stages_write_sample_grids(runs):
    for stage in ("vae", "unet-text", "cotrain"):
        assert list((runs(stage) / "samples").glob("*.gif")), stage


def test_cotrain_output_is_a_pipeline_checkpoint(runs, prepared):
    ckpt = runs("cotrain") / "model"
    assert sorted(p.name for p in ckpt.iterdir()) == ["data_transform", "fmri_encoder", "scheduler", "unet", "vae"]
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    fmri = np.load(prepared / "test" / "fmri.npy")[:2]
    video = pipe(fmri, None, GenerationConfig(num_frames=3, num_inference_steps=2, guidance_scale=2.0), progress=False)
    assert video.shape == (2, 3, 32, 32, 3) and video.dtype == np.uint8


def test_mbm_pretrains_on_hcp_runs_and_initialises_contrastive(sim_root, prepared, runs, tmp_path):
    """The real path: MBM on a `prepare --layout hcp` folder (another voxel count), its backbone reused."""
    from train_helpers import run

    from mindvideo.checkpoint import load_fmri_encoder
    from mindvideo.data import PrepareConfig, prepare, preprocess_defaults

    hcp = tmp_path / "hcp"
    prepare(
        sim_root,
        hcp,
        config=PrepareConfig(layout="hcp", pattern="**/*.dtseries.nii"),
        preprocess=preprocess_defaults("hcp"),
    )
    mbm = run("mbm", hcp, tmp_path / "mbm")
    assert json.loads((mbm / "stage.json").read_text())["inputs"]["data_kind"] == "hcp"
    pretrained = load_fmri_encoder(mbm / "model" / "fmri_encoder")
    contrastive = run(
        "contrastive", prepared, tmp_path / "contrastive", {"clip": str(runs("clip")), "init_encoder": str(mbm)}
    )
    encoder = load_fmri_encoder(contrastive / "model" / "fmri_encoder")
    assert pretrained.config.num_voxels != encoder.config.num_voxels
    assert encoder.patch_embed.proj.weight.shape == pretrained.patch_embed.proj.weight.shape


def test_bf16_autocast_with_gradient_checkpointing_and_accumulation(prepared, runs, tmp_path):
    from train_helpers import run

    overrides = {
        "vae": str(runs("vae")),
        "text_encoder": str(runs("clip")),
        "train.precision": "bf16",
        "train.gradient_checkpointing": True,
        "train.grad_accum": 2,
        "train.steps": 2,
        "snr_gamma": 5.0,
        "train_frames": 2,
    }
    out = run("unet-text", prepared, tmp_path / "bf16", overrides)
    losses = read_metrics(out / "metrics.csv")["train/loss"]
    assert len(losses) == 2 and all(np.isfinite(v) for _, v in losses)


def test_exported_weights_are_the_ema_weights(prepared, tmp_path):
    from safetensors.torch import load_file
    from train_helpers import run

    out = run("mbm", prepared, tmp_path / "ema", {"train.ema_decay": 0.5})
    ema = load_file(str(out / "checkpoints" / "step-0000003" / "ema.safetensors"))
    live = load_file(str(out / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    exported = load_file(str(out / "model" / "fmri_encoder" / "diffusion_pytorch_model.safetensors"))
    key = "blocks.0.mlp.fc1.weight"
    assert not torch.equal(ema[f"encoder.{key}"], live[f"encoder.{key}"])
    torch.testing.assert_close(exported[key], ema[f"encoder.{key}"])
