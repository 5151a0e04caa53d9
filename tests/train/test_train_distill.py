"""The distill stage on the tiny data: guidance distillation brings the single-pass student towards the guided
teacher, consistency distillation lowers its loss on held-out clips, the outputs are checkpoints the pipeline runs
(LCM, 4 steps), a resumed run equals an uninterrupted one, and wrong teachers are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import DDIMScheduler, LCMScheduler
from train_helpers import assert_same_weights, config, listing, run

from mindvideo.checkpoint import SCHEDULER_CONFIG, load_unet
from mindvideo.cli import main
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline
from mindvideo.train import distillation as dl
from mindvideo.train import run_stage
from mindvideo.train.stages import DistillStage

# 60 steps of batch 4 (~15 s each); held-out losses average the 6 validation clips (one clip is too noisy a measure)
TRAIN = {"train.steps": 60, "train.batch_size": 4, "train.lr": 3e-4, "train.log_every": 10, "validation.clips": 6}
BASE = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def guidance_run(prepared, runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "guidance"
    return run("distill", prepared, out, {"teacher": str(runs("cotrain")), **TRAIN})


@pytest.fixture(scope="module")
def consistency_run(prepared, guidance_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "consistency"
    return run("distill", prepared, out, {"mode": "consistency", "teacher": str(guidance_run), **TRAIN})


def heldout(prepared, overrides, trained=None) -> float:
    """The held-out distillation loss of a freshly built stage, with the trained student's weights (as online and
    as target network) when ``trained`` names an output."""
    torch.manual_seed(0)
    stage = DistillStage(config("distill", {**TRAIN, **overrides}), prepared)
    objective = stage.build()
    if trained is not None:
        state = load_unet(trained / "model" / "unet").state_dict()
        objective.student.load_state_dict(state)
        if hasattr(objective, "target"):
            objective.target.load_state_dict(state)
    return stage.heldout_loss(objective)


def test_guidance_student_approaches_the_guided_teacher(prepared, runs, guidance_run):
    overrides = {"teacher": str(runs("cotrain"))}
    before, after = heldout(prepared, overrides), heldout(prepared, overrides, guidance_run)
    print(f"held-out ‖ε_student − ε_guided teacher‖²: {before:.5f} at init → {after:.5f}")
    assert after < 0.8 * before
    unet = json.loads((guidance_run / "model" / "unet" / "config.json").read_text())
    assert unet["guidance_embedding"] and unet["guidance_range"] == [1.0, 8.0]
    assert unet["schedulers"] == ["ddim", "dpm", "euler"]
    info = json.loads((guidance_run / "stage.json").read_text())
    assert info["status"] == "finished" and info["inputs"]["teacher_passes"] == 2
    assert "val_sample_mse_to_teacher" in info["metrics"] and list((guidance_run / "samples").glob("*.gif"))


def test_consistency_loss_falls_on_heldout_clips(prepared, guidance_run, consistency_run):
    overrides = {"mode": "consistency", "teacher": str(guidance_run)}
    before, after = heldout(prepared, overrides), heldout(prepared, overrides, consistency_run)
    print(f"held-out consistency loss: {before:.5f} at init → {after:.5f}")
    assert after < 0.8 * before
    info = json.loads((consistency_run / "stage.json").read_text())
    assert info["inputs"]["teacher_passes"] == 1


def test_student_checkpoints_are_complete_and_run_in_the_pipeline(prepared, runs, guidance_run, consistency_run):
    teacher = runs("cotrain") / "model"
    ckpt = consistency_run / "model"
    assert sorted(p.name for p in ckpt.iterdir()) == ["data_transform", "fmri_encoder", "scheduler", "unet", "vae"]
    for part in ("fmri_encoder", "vae"):  # the frozen parts are the teacher's, byte for byte
        for f in (teacher / part).iterdir():
            assert (ckpt / part / f.name).read_bytes() == f.read_bytes()
    unet = json.loads((ckpt / "unet" / "config.json").read_text())
    assert unet["schedulers"] == ["lcm"] and unet["guidance_range"] == [1.0, 8.0]
    scheduler = json.loads((ckpt / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["original_inference_steps"] == 50
    fmri = np.load(prepared / "test" / "fmri.npy")[:2]
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    cfg = GenerationConfig(num_frames=3, num_inference_steps=4, scheduler="lcm", guidance_scale=4.0)
    video = pipe(fmri, None, cfg, progress=False)
    assert video.shape == (2, 3, 32, 32, 3) and video.dtype == np.uint8
    guided = MindVideoPipeline.from_pretrained(guidance_run / "model")
    assert guided(fmri, None, cfg, scheduler="dpm", progress=False).shape == video.shape


def test_consistency_resume_equals_uninterrupted(prepared, guidance_run, tmp_path):
    """The EMA target network and its step counter are part of the resumable state."""
    overrides = {"mode": "consistency", "teacher": str(guidance_run), "target_decay": 0.5}
    cfg = config("distill", {**overrides, "train.steps": 4, "train.grad_accum": 2, "train.batch_size": 4})
    run_stage("distill", cfg, prepared, tmp_path / "straight")
    run_stage("distill", cfg, prepared, tmp_path / "resumed", stop_at=2)
    run_stage("distill", cfg, prepared, tmp_path / "resumed", resume=True)
    assert_same_weights(tmp_path / "straight" / "model" / "unet", tmp_path / "resumed" / "model" / "unet", atol=1e-6)
    straight, resumed = (tmp_path / k / "checkpoints" / "step-0000004" for k in ("straight", "resumed"))
    assert_same_weights(straight, resumed, atol=1e-6)
    from safetensors.torch import load_file

    saved = load_file(str(resumed / "trainable.safetensors"))
    assert int(saved["target_step"]) == 3 and any(k.startswith("target.") for k in saved)


@pytest.mark.slow
def test_two_process_consistency_equals_one_process(prepared, guidance_run, tmp_path):
    """DDP (torchrun, 2 CPU processes, gloo): each rank folds the same synchronised weights into its target."""
    from safetensors.torch import load_file
    from test_train_distributed import _same_losses, _torchrun

    # MSE (the pseudo-Huber gradient, c = 0.001, is nearly sign(d)). Losses match to 1e-5 and the students' outputs
    # closely; single weights to one Adam step (lr 1e-4): Adam's first steps are nearly sign(gradient), so a weight
    # whose gradient is near zero and rounds differently in the two batch layouts moves a step the other way
    atol = 1e-4

    overrides = {
        "mode": "consistency",
        "teacher": str(guidance_run),
        "target_decay": 0.5,
        "loss": "mse",
        "train.lr": 1e-4,
        "train.steps": 3,
        "train.batch_size": 4,
        "train.threads": 1,
    }
    run_stage("distill", config("distill", overrides), prepared, tmp_path / "single")
    _torchrun("distill", prepared, tmp_path / "ddp", overrides, entry=("mindvideo", "train"))
    _same_losses(tmp_path / "single", tmp_path / "ddp")
    assert_same_weights(tmp_path / "single" / "model" / "unet", tmp_path / "ddp" / "model" / "unet", atol)
    states = [load_file(str(tmp_path / r / "checkpoints" / "step-0000003" / "trainable.safetensors")) for r in
              ("single", "ddp")]  # fmt: skip
    for key in (k for k in states[0] if k.startswith("target.")):
        torch.testing.assert_close(states[0][key], states[1][key], atol=atol, rtol=0)
    single, ddp = (load_unet(tmp_path / r / "model" / "unet") for r in ("single", "ddp"))
    x, c = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 16, single.config.cross_attention_dim)
    with torch.no_grad():
        torch.testing.assert_close(single(x, 500, c, guidance=4.0), ddp(x, 500, c, guidance=4.0), atol=1e-4, rtol=1e-3)


def test_distillation_maths_matches_the_diffusers_schedulers():
    lcm = LCMScheduler.from_config(BASE)
    lcm.set_timesteps(4)
    grid = dl.skip_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and set(lcm.timesteps.tolist()) <= set(grid.tolist())
    x, eps = torch.randn(2, 4, 2, 8, 8), torch.randn(2, 4, 2, 8, 8)
    for t in lcm.timesteps:  # f(x, t) is the sampler's ``denoised``
        out = lcm.step(eps, t, x, generator=torch.Generator().manual_seed(0))
        ours = dl.consistency_output(lcm, x, eps, torch.full((2,), int(t)))
        torch.testing.assert_close(ours, out.denoised, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dl.consistency_output(lcm, x, eps, torch.tensor([-1, 0])), x)  # f(x, 0) = x
    ddim = DDIMScheduler.from_config(BASE)
    ddim.set_timesteps(50)  # SD's grid is offset by steps_offset; step from 981 to 961 (k = 20)
    t = torch.tensor([981, 981])
    expected = ddim.step(eps, 981, x).prev_sample
    torch.testing.assert_close(dl.ddim_step(ddim.alphas_cumprod, x, eps, t, t - 20), expected, rtol=1e-5, atol=1e-6)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_bad_teachers_exit_2_and_write_nothing(prepared, runs, guidance_run, consistency_run, tmp_path):
    out = tmp_path / "out"
    base = ["train", "distill", "--preset", "tiny", "--data", prepared, "--out", out]
    cases = [
        (["--mode", "guidance", "--set", f"teacher={runs('unet-text')}"], "expected teacher to be a finished cotrain"),
        (["--mode", "guidance", "--set", f"teacher={runs('vae') / 'model'}"], "expected a trained video model"),
        (["--mode", "guidance", "--set", f"teacher={guidance_run}"], "not a distilled student for --mode guidance"),
        (["--mode", "consistency", "--set", f"teacher={consistency_run}"], "found a consistency student"),
        (
            ["--mode", "consistency", "--set", f"teacher={guidance_run}", "--set", "guidance_range=[0.5,12]"],
            "expected guidance_range inside the teacher student's range [1.0, 8.0]",
        ),
        (["--mode", "guidance"], "expected teacher (a cotrain output"),
        (["--mode", "lcm", "--set", f"teacher={runs('cotrain')}"], "Invalid value for '--mode'"),
    ]
    for args, message in cases:
        result = cli(*base, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output, result.output
        assert listing(out) == []


def test_print_config_shows_the_mode(tmp_path):
    result = cli("train", "distill", "--preset", "demo", "--mode", "consistency", "--print-config")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["mode"] == "consistency" and data["guidance_range"] == [1.0, 8.0] and data["ddim_steps"] == 50
