"""benchmarks/gpu.sh: which commands each part runs and where results go (its --dry-run; no GPU needed)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MINDVIDEO_RESULTS"} | (env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=full_env, capture_output=True, text=True)


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines()]


def test_all_runs_the_gpu_tests_kernels_and_e2e_into_the_env_results_folder(tmp_path):
    done = _run(["all", "--dry-run"], tmp_path, {"MINDVIDEO_RESULTS": "res"})
    assert done.returncode == 0, done.stderr
    results = str(tmp_path / "res")  # relative to the caller's folder
    commands = _commands(done.stdout)
    assert [c[:3] for c in commands] == [
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
        ["python3", "-m", "pytest"],
        ["python3", "benchmarks/triton_kernels.py", "--out-dir"],
        ["python3", "benchmarks/e2e.py", "--gpu"],
    ]
    assert "gpu" in commands[1] and commands[1][commands[1].index("-m", 2) + 1] == "gpu"
    assert commands[2][3] == results and commands[3][commands[3].index("--out-dir") + 1] == results
    assert all(
        c[-2:] == [">", f"{results}/{log}"]
        for c, log in zip(commands, ["gpu-device.txt", "gpu-tests.log", "gpu-kernels.log", "gpu-e2e.log"])
    )
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_results_option_wins_and_each_part_runs_its_own_steps(tmp_path):
    checks = _commands(_run(["checks", "--dry-run", "--results", "a"], tmp_path, {"MINDVIDEO_RESULTS": "b"}).stdout)
    assert any("benchmarks/triton_kernels.py" in c for c in checks)
    assert not any("benchmarks/e2e.py" in c for c in checks)
    assert str(tmp_path / "a") in checks[-1] and not any(str(tmp_path / "b") in " ".join(c) for c in checks)
    bench = _commands(_run(["bench", "--dry-run"], tmp_path).stdout)
    assert any("benchmarks/e2e.py" in c for c in bench) and not any("benchmarks/triton_kernels.py" in c for c in bench)
    assert str(SCRIPT.parent / "results") in bench[-1]  # the default folder


def test_wheels_installs_them_before_building_the_package(tmp_path):
    commands = _commands(_run(["bench", "--dry-run", "--wheels", "w"], tmp_path).stdout)
    assert commands[0][:4] == ["python3", "-m", "pip", "install"] and commands[0][-1] == f"{tmp_path}/w/*.whl"
    assert commands[1][-2:] == ["-e", "."]
    download = _commands(_run(["wheels", "--dry-run", "--python", "3.12", "--wheels", "w"], tmp_path).stdout)
    assert download[0][:4] == ["python3", "-m", "pip", "download"] and "3.12" in download[0]
    assert download[0][download[0].index("-d") + 1] == str(tmp_path / "w") and "diffusers" in download[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "expected checks, bench, all or wheels"), (["bench", "--nope"], "unknown argument '--nope'")],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path, args, message):
    done = _run(args, tmp_path)
    assert done.returncode == 2 and f"error: {message}" in done.stderr and done.stdout == ""
    assert list(tmp_path.iterdir()) == []
