"""Every benchmark script runs as a file from the repository root, as the README shows (``python benchmarks/X.py``).

Run that way, Python puts ``benchmarks/`` first on ``sys.path``, so a module there named like an installed package
(``kernels.py`` once hid PyPI's ``kernels``, which transformers imports) breaks every script that imports diffusers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if "__main__" in p.read_text(encoding="utf-8"))


def test_scripts_found():
    assert {"student.py", "stream_soak.py", "triton_kernels.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_runs_as_a_file(script):
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower(), result.stdout[-500:]


def test_no_benchmark_module_hides_an_installed_distribution():
    import importlib.metadata

    installed = {name.replace("-", "_").lower() for name in importlib.metadata.packages_distributions()}
    hiding = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem.lower() in installed)
    assert hiding == [], f"benchmarks/ modules named like installed packages: {hiding}"
