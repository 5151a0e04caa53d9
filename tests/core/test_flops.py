"""The FLOP counter: exact counts of single ops (SDPA on CPU included), SD-1.5 sizes against the quoted figures and
against diffusers' image UNet plus the video layers counted by hand, the tiny decoder's budget, the clip table and
the benchmark script's result file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mindvideo.checkpoint import sd15_vae_config
from mindvideo.flops import (
    count_flops,
    flops_per_clip,
    markdown_table,
    tiny_decoder_flops,
    unet_flops,
    vae_decoder_flops,
)
from mindvideo.models import VideoUNetConfig
from mindvideo.models.tiny_decoder import TinyDecoderConfig

ROOT = Path(__file__).resolve().parents[2]
G = 1e9


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_single_ops_are_counted_exactly(device):
    q, k = torch.randn(2, 3, 40, 8, device=device), torch.randn(2, 3, 24, 8, device=device)
    # CPU SDPA runs a kernel torch's own table lacks: counted here as 4·B·H·L·S·E (QKᵀ and AV)
    attention = count_flops(F.scaled_dot_product_attention, q, k, k)
    assert attention.total == attention.attention == 4 * 2 * 3 * 40 * 24 * 8
    conv = count_flops(torch.nn.Conv2d(4, 6, 3, padding=1).to(device), torch.randn(1, 4, 5, 7, device=device))
    assert conv.total == conv.conv == 2 * 4 * 6 * 9 * 5 * 7
    linear = count_flops(torch.nn.Linear(16, 5).to(device), torch.randn(3, 11, 16, device=device))
    assert linear.total == linear.linear == 2 * 3 * 11 * 16 * 5


@pytest.fixture(scope="module")
def sd15():
    """Per-frame counts at 256² (one frame: the image UNet's setting)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        image_unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        x, t, c = torch.empty(1, 4, 32, 32), torch.full((1,), 500.0), torch.empty(1, 77, 768)
    return {
        "image_unet": count_flops(image_unet, x, t, c),
        "video_unet": unet_flops(VideoUNetConfig.sd15(), 256, 256, frames=1),
        "vae": vae_decoder_flops(sd15_vae_config(), 256, 256),
        "tiny": tiny_decoder_flops(TinyDecoderConfig.for_vae(sd15_vae_config()), 256, 256),
    }


def test_reference_facts_without_the_attention_products(sd15):
    """The quoted figures (171.6 GFLOP UNet, 620 GFLOP VAE decoder per frame at 256²) leaves out QKᵀ and AV."""
    image, vae = sd15["image_unet"], sd15["vae"]
    assert (image.total - image.attention) / G == pytest.approx(171.6, abs=0.1)
    assert (vae.total - vae.attention) / G == pytest.approx(620.0, abs=0.5)
    assert image.total / G == pytest.approx(180.1, abs=0.1) and vae.total / G == pytest.approx(622.2, abs=0.1)


def test_video_unet_is_the_image_unet_plus_its_video_layers(sd15):
    """Same convolutions; + the temporal attention's q/k/v/out projections (4·C² per token); + a second key frame
    in every self-attention (4·N²·C more QKᵀ/AV) and one-frame temporal attention (4·N·C)."""
    image, video = sd15["image_unet"], sd15["video_unet"]
    levels = [(320, 32 * 32, 5), (640, 16 * 16, 5), (1280, 8 * 8, 5), (1280, 4 * 4, 1)]  # (C, tokens, transformers)
    projections = sum(2 * 4 * c * c * n * k for c, n, k in levels)
    attention = sum((4 * n * n * c + 4 * n * c) * k for c, n, k in levels)
    assert video.conv == image.conv
    assert video.linear - image.linear == pytest.approx(projections, rel=1e-6)
    assert video.attention - image.attention == pytest.approx(attention, rel=1e-6)


def test_default_tiny_decoder_costs_at_most_a_twentieth_of_the_vae_decoder(sd15):
    ratio = sd15["vae"].total / sd15["tiny"].total
    vae, tiny = sd15["vae"].total / G, sd15["tiny"].total / G
    print(f"SD-1.5 at 256²: VAE decoder {vae:.1f} GFLOP per frame, tiny decoder {tiny:.1f} (×{ratio:.1f})")
    assert ratio >= 20
    assert sd15["tiny"].attention == 0  # attention-free


def test_clip_table_adds_up():
    report = flops_per_clip(
        VideoUNetConfig.tiny(),
        sd15_vae_config(),
        TinyDecoderConfig.for_vae(sd15_vae_config()),
        height=64,
        width=64,
        frames=4,
        teacher_steps=5,
        student_steps=2,
        rate=1e12,
    )
    per_frame = report["per_frame_gflop"]
    teacher, student, tiny = report["clips"]
    unet_clip = per_frame["unet"]["total"] * 4 * G
    assert teacher["unet_tflop"] == pytest.approx(unet_clip * 2 * 5 / 1e12, abs=0.01)
    assert teacher["decoder_tflop"] == pytest.approx(per_frame["vae_decoder"]["total"] * 4 * G / 1e12, abs=0.01)
    assert student["unet_passes"] == 1 and student["steps"] == 2
    assert student["decoder_tflop"] == teacher["decoder_tflop"]
    assert tiny["unet_tflop"] == student["unet_tflop"] and tiny["decoder_tflop"] < student["decoder_tflop"]
    for row in report["clips"]:
        assert row["floor_seconds"] == pytest.approx(row["total_tflop"], abs=1e-4)  # at 1 TFLOP/s
        assert row["real_time_factor"] == pytest.approx(row["floor_seconds"] / 2.0, abs=1e-5)
    assert teacher["configuration"] in markdown_table(report)


def test_benchmark_script_writes_a_result_with_provenance(tmp_path):
    out = tmp_path / "flops.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "flops.py"), "--frames", "2", "--teacher-steps", "3", "--out", out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert {"device", "commit", "command", "date"} <= set(record)
    assert record["settings"]["frames"] == 2 and record["clips"][0]["steps"] == 3
    assert record["vae_over_tiny"] >= 20
    assert "| teacher: 2 passes (guidance) + VAE decoder | 2 × 3 |" in done.stdout
