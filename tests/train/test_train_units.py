"""Pieces of the trainer: the strict config round trip, presets, batch order, rank-invariant randomness, the MBM
loss, gradient checkpointing, the schedule and EMA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, FMRIEncoderConfig, VideoUNet, VideoUNetConfig
from mindvideo.train import STAGES, TrainConfig
from mindvideo.train.data import StepRandom, chunk_of, global_batch, single_chunk
from mindvideo.train.optim import EMA, lr_factor
from mindvideo.train.stages.mbm import masked_modelling_loss


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("preset", ["tiny", "demo", "reference"])
def test_presets_round_trip_through_json(stage, preset, tmp_path):
    cls = STAGES[stage].config_class
    config = cls.from_preset(preset)
    config.save(tmp_path / "c.json")
    again = cls.from_dict(__import__("json").loads((tmp_path / "c.json").read_text()), validate=False)
    assert again == config


def test_overrides_reach_nested_fields():
    config = STAGES["mbm"].config_class.tiny().apply_overrides({"train.steps": 7, "encoder.depth": 3})
    assert config.train.steps == 7 and config.encoder.depth == 3


def test_global_batches_cover_each_epoch_once_and_resume_by_step():
    batches = np.concatenate([global_batch(10, 4, seed=1, step=s) for s in range(5)])  # 20 = two epochs
    assert sorted(batches[:10]) == list(range(10)) and sorted(batches[10:]) == list(range(10))
    assert np.array_equal(global_batch(10, 4, 1, 3), batches[12:16])


def test_step_random_is_the_same_split_over_ranks_and_micro_steps():
    whole = StepRandom(0, single_chunk(8, step=5)).randn("noise", 3)
    parts = [
        StepRandom(0, chunk_of(5, micro, 8, grad_accum=2, rank=rank, world=2)).randn("noise", 3)
        for micro in range(2)
        for rank in range(2)
    ]
    torch.testing.assert_close(torch.cat(parts), whole)
    assert not torch.equal(StepRandom(0, single_chunk(8, 5)).randn("other", 3), whole)


def test_masked_modelling_loss_equals_forward_mbm():
    torch.manual_seed(0)
    encoder = FMRIEncoder(FMRIEncoderConfig.tiny(64).replace(decoder_depth=1, decoder_embed_dim=16))
    fmri = torch.randn(3, 2, 64)
    expected, pred, mask = encoder.forward_mbm(fmri, 0.75, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, 4, generator=torch.Generator().manual_seed(1))
    loss, pred2, mask2 = masked_modelling_loss(encoder, fmri, noise, 0.75)
    torch.testing.assert_close(loss, expected)
    assert torch.equal(mask, mask2) and torch.allclose(pred2.reshape(pred.shape), pred)


def _grads(model: torch.nn.Module, loss_fn) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    unet, encoder = VideoUNet(VideoUNetConfig.tiny()), FMRIEncoder(FMRIEncoderConfig.tiny(64))
    x, c, fmri = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 8, 32), torch.randn(2, 2, 64)
    for model, loss in ((unet, lambda: unet(x, 10, c).square().mean()), (encoder, lambda: encoder(fmri).sum())):
        plain = _grads(model, loss)
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
        for a, b in zip(plain, _grads(model, loss)):
            torch.testing.assert_close(a, b)


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55) and lr_factor(110, cfg) == pytest.approx(0.1)


def test_ema_tracks_and_swaps_weights():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA({"p": p}, decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # warm-up decay min(0.5, 2/11) → shadow = 1 − 2/11
    with ema.applied():
        torch.testing.assert_close(p.detach(), torch.full((2,), 9 / 11))
    assert torch.equal(p.detach(), torch.ones(2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lr": -1.0}, "train.lr > 0"),
        ({"train.stepz": 3}, "unknown ['stepz']"),
        ({"train.steps": "many"}, "train.steps to be int"),
        ({"mask_ratio": 1.5}, "mask_ratio in (0, 1)"),
        ({"train.precision": "fp8"}, "train.precision among"),
        ({"encoder.decoder_depth": 0}, "decoder_depth ≥ 1"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(overrides, message):
    with pytest.raises(MindVideoError, match=__import__("re").escape(message)):
        STAGES["mbm"].config_class.tiny().apply_overrides(overrides)


def test_config_files_of_another_stage_are_refused(tmp_path):
    STAGES["mbm"].config_class.tiny().save(tmp_path / "mbm.json")
    with pytest.raises(MindVideoError, match="expected a config of stage 'cotrain'"):
        STAGES["cotrain"].config_class.load(tmp_path / "mbm.json")


def test_train_config_fields_are_documented_defaults():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"precision", "gradient_checkpointing", "grad_accum", "ema_decay", "warmup_steps", "strategy"} <= names


def test_training_frame_runs_are_consecutive_and_rank_invariant():
    from mindvideo.train.diffusion import sample_latents

    mean = torch.arange(6.0).reshape(1, 1, 6, 1, 1).expand(4, 2, 6, 2, 2).contiguous()
    batch = {"latent_mean": mean, "latent_std": torch.zeros_like(mean)}
    runs = sample_latents(batch, StepRandom(0, single_chunk(4)), 1.0, frames=3)  # (4, 2, 3, 2, 2)
    assert runs.shape == (4, 2, 3, 2, 2)
    assert torch.all(runs[:, :, 1:] - runs[:, :, :-1] == 1)  # consecutive frames of each clip
    half = sample_latents({k: v[2:] for k, v in batch.items()}, StepRandom(0, chunk_of(0, 0, 4, 1, 1, 2)), 1.0, 3)
    assert torch.equal(half, runs[2:])


def test_min_snr_weighting_down_weights_low_noise_steps():
    from mindvideo.train.diffusion import diffusion_loss, noise_scheduler

    scheduler = noise_scheduler()
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    assert snr[0] > 5 > snr[-1]  # the weight min(SNR, 5) / SNR is < 1 exactly for the low-noise steps

    class Zero(torch.nn.Module):
        def forward(self, x, t, c):
            return torch.zeros_like(x)

    latents, rng = torch.randn(8, 4, 2, 4, 4), StepRandom(0, single_chunk(8))
    plain = diffusion_loss(Zero(), scheduler, latents, None, rng)
    weighted = diffusion_loss(Zero(), scheduler, latents, None, rng, snr_gamma=5.0)
    assert weighted < plain


def test_text_encoder_in_the_sd_layout_loads(runs, tmp_path):
    """SD-1.5 ships text_encoder/ (a CLIPTextModel) with its tokenizer in a sibling tokenizer/ folder."""
    from transformers import AutoTokenizer, CLIPModel, CLIPTextModel

    from mindvideo.train.clip_models import LocalCLIP

    source = runs("clip") / "model" / "clip"
    full = CLIPModel.from_pretrained(str(source))
    text = CLIPTextModel(full.config.text_config)
    getattr(text, "text_model", text).load_state_dict(full.text_model.state_dict())  # transformers 4 | 5
    text.save_pretrained(str(tmp_path / "sd" / "text_encoder"))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp_path / "sd" / "tokenizer"))
    sd = LocalCLIP.from_folder(tmp_path / "sd" / "text_encoder")
    ours = LocalCLIP.from_folder(source)
    captions = ["a red ball moving up", ""]
    torch.testing.assert_close(sd.text_states(captions), ours.text_states(captions))
    with pytest.raises(MindVideoError, match="image tower"):
        sd.image_embeds(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
