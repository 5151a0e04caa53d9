"""Shared fixtures of the data-layer tests: one tiny simulated dataset and its prepared form per session.

Tests that damage inputs copy what they need (the ``mini_wen`` fixture); the session dataset stays read-only.
Key figures (voxel-selection precision/recall, class/lag recovery) are collected with the ``metrics`` fixture and
printed in pytest's terminal summary, so they show up in ordinary test output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mindvideo.data import PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate

METRICS: list[tuple[str, str]] = []


def report(name: str, value: object) -> None:
    """Record a figure for the terminal summary."""
    METRICS.append((name, str(value)))


def pytest_terminal_summary(terminalreporter) -> None:
    if METRICS:
        terminalreporter.section("mindvideo data: simulated ground-truth figures")
        for name, value in METRICS:
            terminalreporter.write_line(f"{name}: {value}")


SIM_CONFIG = SimConfig.tiny(seed=0)


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny simulated dataset (CIFTI, NIfTI, arrays), ~5 s."""
    root = tmp_path_factory.mktemp("sim") / "sim"
    simulate(root, SIM_CONFIG)
    return root


@pytest.fixture(scope="session")
def prepared_wen(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare --layout wen`` of the simulated CIFTI runs with the reference defaults (t-test, lag 0)."""
    out = tmp_path_factory.mktemp("prepared") / "wen"
    prepare(sim_root, out, config=PrepareConfig(layout="wen", size=32), preprocess=preprocess_defaults("wen"))
    return out


@pytest.fixture
def metrics():
    """``metrics(name, value)`` records a figure for the terminal summary."""
    return report


@pytest.fixture
def mini_wen(sim_root: Path, tmp_path: Path):
    """``mini_wen(segments=…)``: a damageable copy of part of the simulated dataset (subject 1) under tmp_path."""

    def make(segments: tuple[str, ...] = ("seg1", "seg2", "seg3", "test1")) -> Path:
        return _copy_part(sim_root, tmp_path / "mini", segments)

    return make


def _copy_part(sim_root: Path, dest: Path, segments: tuple[str, ...]) -> Path:
    (dest / "stimuli" / "captions").mkdir(parents=True)
    for name in segments:
        shutil.copy(sim_root / "stimuli" / f"{name}.mp4", dest / "stimuli")
        shutil.copy(sim_root / "stimuli" / "captions" / f"{name}.txt", dest / "stimuli" / "captions")
        shutil.copytree(sim_root / "subject1" / "fmri" / name, dest / "subject1" / "fmri" / name)
    shutil.copytree(sim_root / "subject1" / "anat", dest / "subject1" / "anat")
    shutil.copy(sim_root / "dataset.json", dest)
    return dest
