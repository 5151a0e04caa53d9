"""From the repository root our top-level folders must not hide installed packages of the same name.

``python -m …``, ``python -c …`` and ``torchrun -m …`` put the working directory first on ``sys.path``; transformers
(and so diffusers) imports PyPI's ``kernels``, a name our ``kernels/`` folder also has. Each case runs in a fresh
interpreter whose working directory is the repo root. (``torchrun -m mindvideo train`` from the root is exercised by
``tests/train/test_train_distributed.py``.)
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("kernels", "export", "engine", "benchmarks")


def _run(*args: str, timeout: float = 300, executable: bool = True) -> subprocess.CompletedProcess:
    """``python ARGS`` (or ``ARGS`` alone with ``executable=False``) in a fresh process whose cwd is the repo root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    command = [sys.executable, *args] if executable else list(args)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _installed(name: str) -> bool:
    return name in importlib.metadata.packages_distributions()


def test_diffusers_models_import_from_the_root():
    result = _run("-c", "from diffusers import AutoencoderKL, UNet2DConditionModel; import mindvideo.pipeline")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", FOLDERS)
def test_bare_name_is_the_installed_distribution_or_absent(name):
    result = _run("-c", f"import {name}; print({name}.__file__)")
    ours = str(ROOT / name / "__init__.py")
    if _installed(name):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() != ours
        assert Path(result.stdout.strip()).resolve().parent.parent != ROOT
    else:
        assert result.returncode == 1
        assert f"import it as mindvideo.{name}" in result.stderr


@pytest.mark.skipif(not _installed("kernels"), reason="PyPI's kernels is not installed (transformers < 5.25)")
def test_pypi_kernels_api_from_the_root():
    """What diffusers failed on: a name that only the PyPI package has."""
    result = _run("-c", "from kernels import CUDAProperties; import mindvideo.kernels as k; print(k.__name__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "mindvideo.kernels"


@pytest.mark.parametrize("runner", ["python -m pytest", "pytest"])
def test_pytest_from_the_root(runner):
    """``python -m pytest`` (root first on sys.path) and the plain ``pytest`` script collect and run a test that
    imports diffusers through mindvideo."""
    script = Path(sys.executable).with_name("pytest")
    if runner == "pytest" and not script.exists():
        pytest.skip(f"no pytest script beside {sys.executable}")
    as_module = runner == "python -m pytest"
    command = ["-m", "pytest"] if as_module else [str(script)]
    test = "tests/core/test_unet.py::test_state_dict_keys_are_diffusers_plus_temporal"
    result = _run(*command, "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test, executable=as_module)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout
