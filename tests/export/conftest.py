"""Export test set-up: one tiny checkpoint and one CLI export per session (the export is the slow part)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from export_helpers import run_cli

from mindvideo.checkpoint import build_random_checkpoint


@pytest.fixture(scope="session")
def export_ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with every UNet weight (temporal layers too) perturbed."""
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", init_scale=0.02)


@pytest.fixture(scope="session")
def exported(export_ckpt, tmp_path_factory):
    """``mindvideo export --format onnx`` of the tiny checkpoint: (folder, CLI result)."""
    out = tmp_path_factory.mktemp("export") / "out"
    table = out.parent / "table.json"
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", out, "--format", "onnx", "--json", table)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture
def exported_copy(exported, tmp_path) -> Path:
    """A private copy of the session export, for tests that damage or re-export it."""
    return Path(shutil.copytree(exported[0], tmp_path / "out"))
