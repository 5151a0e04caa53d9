"""Where a benchmark result came from: device, commit, command, date — one helper for every script here.

Every file in ``benchmarks/results/`` records at least the device, commit, command and date (files written before
this helper existed name the dirty-tree flag differently), so a number can always be traced to the machine, the code
and the command that produced it::

    from mindvideo.benchmarks.provenance import provenance
    record = {"benchmark": "e2e", **provenance(sys.argv)}   # taken before the run: the load is the load before it
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    """Output of a git command in this checkout, or ``"unknown"`` outside one."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else ``platform.processor()``."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def device_name() -> str:
    """The CUDA device when torch sees one, else the CPU and its logical core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs"


def _in_checkout(arg: str) -> str:
    """A path inside this checkout as the path from its root (a result file names no machine's folders)."""
    path = Path(arg)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else arg


def provenance(argv: Sequence[str]) -> dict[str, Any]:
    """Device, commit, whether tracked files had uncommitted changes, the command as run, the UTC date, the load
    average now (call it before the run) and the versions of the libraries imported so far."""
    versions = {"python": platform.python_version()}
    for name in ("numpy", "torch", "triton", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device_name(),
        "commit": git("rev-parse", "HEAD"),
        "dirty_tree": None if status == "unknown" else bool(status),
        "command": " ".join([Path(sys.executable).name, *map(_in_checkout, argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "versions": versions,
    }
