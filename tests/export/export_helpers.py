"""Helpers shared by the export tests (imported by name: tests/ folders are not packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mindvideo.cli import main


def run_cli(*args: object) -> Result:
    """``mindvideo ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def make_student_checkpoint(teacher: Path, folder: Path, perturb: float = 0.1, **changes: Any) -> Path:
    """A copy of checkpoint ``teacher`` whose UNet is a student of it (``VideoUNet.student_of(teacher, **changes)``),
    its guidance embedding perturbed by ``perturb`` so that g changes the output."""
    import shutil

    import torch

    from mindvideo.checkpoint import load_unet, save_component
    from mindvideo.models import VideoUNet

    shutil.copytree(teacher, folder)
    student = VideoUNet.student_of(load_unet(teacher / "unet"), **changes)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in student.guidance_embedding.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * perturb)
    shutil.rmtree(folder / "unet")
    save_component(student, folder / "unet")
    return folder
