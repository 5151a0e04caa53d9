"""What ``mindvideo demo`` hands a newcomer: labelled GIFs (truth | teacher | student | ridge), a table with the
student, the ground-truth ceiling and each one's seconds per clip, and the README's ``mindvideo eval`` command on its
output giving the n-way scores."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.demo import COLUMN_LABELS, HEADER_HEIGHT, _enlarge, default_assets, summary_table
from mindvideo.train.tracking import video_grid

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "mindvideo-demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--clips", "3", "--steps", "2", "--no-mp4"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_gifs_have_a_header_strip_naming_the_columns(demo_out):
    demo_out, _ = demo_out
    gif = iio.imread(demo_out / "clips" / "clip_000.gif", index=None)[..., :3]  # (F, H, W, 3)
    clips = [np.load(demo_out / name)[0] for name in ("gt.npy", "pred.npy", "student.npy", "ridge.npy")]
    plain = _enlarge(video_grid([clips], 2))  # the same grid without the header
    assert gif.shape == (plain.shape[0], HEADER_HEIGHT + plain.shape[1], *plain.shape[2:])
    header = gif[:, :HEADER_HEIGHT].astype(int)
    assert np.abs(header - header[0]).mean() < 2  # the same strip on every frame (up to each frame's GIF palette)
    assert np.abs(gif[:, HEADER_HEIGHT:].astype(int) - plain).mean() < 4  # the clips below it, as before (GIF palette)
    # dark text over each of the four columns, on white; the plain grid's top rows are clips, not this strip
    assert COLUMN_LABELS == ("truth", "teacher", "student", "ridge")
    quarters = np.array_split(header[0].min(axis=-1), len(COLUMN_LABELS), axis=1)
    assert all((quarter < 100).sum() > 10 and (quarter == 255).mean() > 0.6 for quarter in quarters)
    assert np.abs(header[0] - plain[0, :HEADER_HEIGHT].astype(int)).mean() > 20
    assert iio.imread(demo_out / "all_clips.gif", index=None).shape[1] == HEADER_HEIGHT + 3 * (32 + 2) * 4 + 2 * 4


def test_printed_table_shows_the_ground_truth_ceiling(demo_out):
    demo_out, printed = demo_out
    metrics = json.loads((demo_out / "metrics.json").read_text())
    lines = summary_table(metrics)
    printed = [line.strip() for line in printed.splitlines()]
    start = printed.index(lines[0])  # after the progress bars
    assert printed[start : start + len(lines)] == lines
    assert lines[0].split()[:4] == ["metric", "teacher", "student", "ridge"]
    assert "ground truth (upper bound)" in lines[0]
    truth, decoders = metrics["ground_truth"], ("reconstruction", "student", "ridge", "ground_truth")
    for n in metrics["n_ways"]:
        row = next(line for line in lines if line.startswith(f"video {n}-way top-1"))
        cells = row.split()[3:]  # after "video", "n-way", "top-1"
        expected = [metrics[k]["video_nway"][str(n)] for k in decoders]
        assert cells == [f"{v:.3f}" for v in expected] + [f"{1 / n:.3f}"]
    ssim = next(line for line in lines if line.startswith("SSIM (colour)")).split()[2:]
    assert ssim[3] == f"{truth['ssim_colour']:.3f}" == "1.000"
    seconds = next(line for line in lines if line.startswith("seconds per clip")).split()[3:]
    expected = [f"{metrics[k]['seconds_per_clip']:.3f}" for k in decoders[:3]]
    assert seconds == [*expected, "–", "–"]


def test_metrics_have_the_student_beside_the_teacher(demo_out):
    demo_out, printed = demo_out
    metrics = json.loads((demo_out / "metrics.json").read_text())
    assert set(metrics["student"]) == set(metrics["reconstruction"])
    assert {"frame_nway", "video_nway", "ssim_colour", "psnr", "seconds_per_clip"} <= set(metrics["student"])
    for name in ("reconstruction", "student", "ridge"):
        assert metrics[name]["seconds_per_clip"] > 0, name
    assert metrics["ground_truth"]["seconds_per_clip"] is None
    assert metrics["settings"]["student"] == {"steps": 4, "scheduler": "lcm", "guidance": 5.0, "decoder": "vae"}
    assert "student: 4 LCM steps (1 pass each), vae decoder" in printed
    # the student ran its own sampler: clips unlike the teacher's, and a UNet with the guidance input
    student, teacher = np.load(demo_out / "student.npy"), np.load(demo_out / "pred.npy")
    assert student.shape == teacher.shape and student.dtype == np.uint8
    assert np.abs(student.astype(int) - teacher).mean() > 1


def test_readme_eval_command_on_the_demo_output_gives_n_way_scores(demo_out, tmp_path):
    """The README's "full report" command, run as written on a demo output folder (paths moved to this test's)."""
    demo_out, _ = demo_out
    text = README.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "--pred mindvideo-demo/pred.npy" in b)
    command = block.replace("\\\n", " ")
    command = command.replace("mindvideo-demo/", f"{demo_out}/")
    command = command.replace("mindvideo/assets/demo/", f"{default_assets()}/")
    args = shlex.split(command.replace("--out report/", f"--out {tmp_path / 'report'}"))
    assert args[:2] == ["mindvideo", "eval"]
    result = CliRunner().invoke(main, [*args[1:], "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["settings"]["true_classes"] == "labels"
    for level in ("video_nway", "frame_nway"):
        assert set(metrics[level]) == {"2", "10"} and all("mean" in v for v in metrics[level].values())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| video 2-way | video 10-way | frame 2-way | frame 10-way |" in report
