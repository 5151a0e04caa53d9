"""Helpers shared by the export tests (imported by name: tests/ folders are not packages)."""

from __future__ import annotations

from click.testing import CliRunner, Result

from mindvideo.cli import main


def run_cli(*args: object) -> Result:
    """``mindvideo ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
