"""The README's folder-stream recipe, run as written: its Python snippet writes per-TR files of a simulated run for
the built-in demo model, and its ``mindvideo stream --policy block`` command decodes every window."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.data import FMRITransform, SimConfig, simulate
from mindvideo.demo import default_assets

README = Path(__file__).resolve().parents[2] / "README.md"


def _recipe() -> tuple[str, str]:
    """(the Python snippet, the stream command) of the README's recipe."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Replaying a recorded run through the folder source.**") :]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    return python, command


def test_readme_folder_recipe_streams_every_window_of_a_run(tmp_path):
    checkpoint = default_assets() / "checkpoint"
    # a simulated run on the demo model's grid (the same grayordinates its transform selects)
    sim = SimConfig(grid=(16, 16, 12), train_segments=1, test_segments=1, segment_trs=20, seed=0, formats=("cifti",))
    simulate(tmp_path / "sim", sim, progress=False)
    run = next((tmp_path / "sim").rglob("test1_1_Atlas.dtseries.nii"))
    python, command = _recipe()
    python = python.replace('"CKPT/data_transform"', repr(str(checkpoint / "data_transform")))
    python = python.replace('"run1.dtseries.nii"', repr(str(run)))
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    export = tmp_path / "export"
    expected = FMRITransform.load(checkpoint / "data_transform").load_run(run)  # (T, V_raw)
    names = sorted(p.name for p in export.iterdir())
    assert names == [f"vol_{t:04d}.npy" for t in range(len(expected))]  # no .part file left, scan order kept
    np.testing.assert_array_equal(np.load(export / names[-1]), expected[-1])

    args = shlex.split(command)
    assert args[:2] == ["mindvideo", "stream"] and "--policy" in args and args[args.index("--policy") + 1] == "block"
    args[args.index("--max-trs") + 1] = str(len(expected))
    swap = {"CKPT": str(checkpoint), "folder:export": f"folder:{export}", "file:replay.mp4": f"file:{tmp_path}/r.mp4"}
    args = [swap.get(a, a) for a in args[1:]]
    cheap = ["--frames", "2", "--steps", "1", "--height", "32", "--width", "32", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, *cheap, "--stats-json", str(tmp_path / "stats.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "stats.json").read_text())["summary"]
    windows = len(expected) - summary["lag"]  # the offline windows of the run
    assert summary["trs_in"] == len(expected) and summary["processed"] == summary["windows"] == windows
    assert summary["dropped"] == 0 and (tmp_path / "r.mp4").stat().st_size > 0
