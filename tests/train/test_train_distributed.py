"""Two CPU processes under torchrun (gloo, 127.0.0.1) train to the checkpoint one process reaches with the same
global batch: DDP for the encoder, FSDP (sharded UNet) for a UNet stage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import assert_same_weights, config

from mindvideo.checkpoint import load_fmri_encoder, load_unet
from mindvideo.train import run_stage
from mindvideo.train.tracking import read_metrics

# One process sums the batch in one matmul, two in halves: float rounding differs, and Adam's normalisation
# enlarges it for the few weights whose gradient is near zero. Outputs and losses match to TOLERANCE, weights to
# WEIGHT_ATOL (a tenth of one Adam step at lr 1e-3) except at most OUTLIERS of each tensor, which stay within
# ADAM_BOUND: two runs' Adam steps differ by at most 2·lr each, 2 steps (a wrong reduction moves far more weights).
TOLERANCE, WEIGHT_ATOL, OUTLIERS, ADAM_BOUND = 2e-5, 1e-4, 1e-3, 2 * 2 * 1e-3
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(stage: str, data, out, overrides: dict, entry: tuple[str, ...] = ("mindvideo.train",)) -> None:
    """``torchrun -m mindvideo.train STAGE …`` (or ``entry = ("mindvideo", "train")``: ``-m mindvideo train``)."""
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        *entry,
        stage,
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # from the repo root, as a user runs it: the root is then first on sys.path (no top-level folder may shadow)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _same_losses(a, b) -> None:
    la, lb = read_metrics(a / "metrics.csv")["train/loss"], read_metrics(b / "metrics.csv")["train/loss"]
    assert [s for s, _ in la] == [s for s, _ in lb]
    torch.testing.assert_close(torch.tensor([v for _, v in la]), torch.tensor([v for _, v in lb]), atol=1e-5, rtol=0)


def test_two_process_ddp_equals_one_process(prepared, tmp_path):
    # mask ratio 0.5 keeps 2 of the 4 patches visible, so spatial attention is not degenerate (1 token)
    overrides = {
        "train.steps": 3,
        "train.batch_size": 4,
        "train.threads": 1,
        "train.ema_decay": 0.5,
        "mask_ratio": 0.5,
    }
    run_stage("mbm", config("mbm", overrides), prepared, tmp_path / "single")
    _torchrun("mbm", prepared, tmp_path / "ddp", overrides)
    _same_losses(tmp_path / "single", tmp_path / "ddp")
    assert_same_weights(tmp_path / "single" / "model", tmp_path / "ddp" / "model", WEIGHT_ATOL, ignore_key_bias=True)
    single, ddp = (load_fmri_encoder(tmp_path / r / "model" / "fmri_encoder") for r in ("single", "ddp"))
    fmri = torch.randn(3, single.config.window_size, single.config.num_voxels)
    with torch.no_grad():
        torch.testing.assert_close(single(fmri), ddp(fmri), atol=TOLERANCE, rtol=1e-4)
        gen = [torch.Generator().manual_seed(1) for _ in range(2)]
        mbm = [m.forward_mbm(fmri, 0.75, generator=g)[1] for m, g in zip((single, ddp), gen)]
        torch.testing.assert_close(*mbm, atol=TOLERANCE, rtol=1e-4)


@pytest.mark.slow
def test_two_process_fsdp_equals_one_process(prepared, runs, tmp_path):
    overrides = {
        "train.steps": 2,
        "train.batch_size": 2,
        "train.threads": 1,
        "train.strategy": "fsdp",
        "train.ema_decay": 0.5,
        "vae": str(runs("vae")),
        "text_encoder": str(runs("clip")),
    }
    run_stage("unet-text", config("unet-text", overrides), prepared, tmp_path / "single")
    _torchrun("unet-text", prepared, tmp_path / "fsdp", overrides, entry=("mindvideo", "train"))
    _same_losses(tmp_path / "single", tmp_path / "fsdp")
    single_model, fsdp_model = tmp_path / "single" / "model", tmp_path / "fsdp" / "model"
    assert_same_weights(single_model, fsdp_model, WEIGHT_ATOL, outliers=OUTLIERS, bound=ADAM_BOUND)
    single, fsdp = (load_unet(tmp_path / r / "model" / "unet") for r in ("single", "fsdp"))
    generator = torch.Generator().manual_seed(0)  # fixed inputs: a failure here reproduces
    x = torch.randn(2, 4, 3, 4, 4, generator=generator)
    c = torch.randn(2, 16, single.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(single(x, 500, c), fsdp(x, 500, c), atol=TOLERANCE, rtol=1e-4)
