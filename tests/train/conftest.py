"""Shared fixtures of the training tests: one tiny simulated dataset, prepared, and the tiny stage outputs that
later stages start from (each trained once per session, a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindvideo.data import PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate

SIM = SimConfig.tiny(train_segments=4, test_segments=1, segment_trs=12, test_repeats=2, formats=("cifti",))


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks run fastest on one thread, especially on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-sim") / "sim"
    simulate(root, SIM)
    return root


@pytest.fixture(scope="session")
def prepared(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 training and 12 test windows of 64 voxels (2 TRs, lag 2), 6 frames of 32×32 per window, captions."""
    out = tmp_path_factory.mktemp("train-prepared") / "prepared"
    preprocess = preprocess_defaults("wen", lag=2, select="topk", top_k=60)
    prepare(sim_root, out, config=PrepareConfig(layout="wen", size=32), preprocess=preprocess)
    return out


@pytest.fixture(scope="session")
def runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    """``runs(stage)`` → the output folder of that stage's tiny preset, trained once per session on ``prepared``
    (inputs wired as the recipe wires them)."""
    from train_helpers import run

    root = tmp_path_factory.mktemp("train-runs")
    done: dict[str, Path] = {}

    def get(stage: str) -> Path:
        if stage not in done:
            inputs = {
                "contrastive": {"clip": "clip"},
                "unet-text": {"vae": "vae", "text_encoder": "clip"},
                "cotrain": {"vae": "vae", "init_encoder": "contrastive", "init_unet": "unet-text"},
                "distill": {"teacher": "cotrain"},
            }.get(stage, {})
            overrides = {key: str(get(value)) for key, value in inputs.items()}
            done[stage] = run(stage, prepared, root / stage, overrides)
        return done[stage]

    return get
