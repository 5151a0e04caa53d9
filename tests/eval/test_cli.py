"""``mindvideo eval``: the report files, and bad inputs → one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json
import re

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner
from eval_helpers import noisy, simulated_clips

from mindvideo.cli import main
from mindvideo.eval import PixelClassifier
from mindvideo.fsutil import MARKER

REPORT_FILES = {MARKER, "metrics.json", "report.md", "metrics.png"} | {
    f"{g}.{e}" for g in ("best", "median", "worst") for e in ("gif", "png")
}


def run(*args: object):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


@pytest.fixture
def arrays(tmp_path, clips):
    np.save(tmp_path / "gt.npy", clips)
    np.save(tmp_path / "pred.npy", noisy(clips, 50))
    return tmp_path / "pred.npy", tmp_path / "gt.npy"


def test_writes_the_report_with_all_metrics(arrays, models, tmp_path):
    pred, gt = arrays
    out = tmp_path / "report"
    result = run(
        "--pred",
        pred,
        "--gt",
        gt,
        "--classifier",
        models["vit"],
        "--video-classifier",
        models["videomae"],
        "--clip",
        models["clip"],
        "--out",
        out,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clips"]["evaluated"] == 7 and len(metrics["ssim_colour"]["per_frame"]) == 4
    for key in ("frame_nway", "video_nway"):
        assert 0.0 <= metrics[key]["50"]["mean"] <= 1.0 and metrics[key]["2"]["chance"] == 0.75
    assert metrics["clip_pcc"]["mean"] is not None and metrics["settings"]["classifier"] == str(models["vit"])
    report = (out / "report.md").read_text()
    ours, published = report.split("## Published results (Wen 2018 test set)")
    columns = ["video 2-way", "video 50-way", "frame 2-way", "frame 50-way", "SSIM (colour)", "SSIM (grey)"]
    assert f"| | {' | '.join(columns)} | CLIP-pcc |" in ours and "| **mindvideo (this run)** | " in ours
    assert f"| {metrics['ssim_colour']['mean']:.3f} ± {metrics['ssim_colour']['std']:.3f} | " in ours
    assert "data_range 255, 7×7 uniform window" in ours and "σ 1.5" in ours and "0.839" not in ours
    # the published Wen 2018 rows stand apart, under a caption saying when they compare, with no row of ours
    columns = ["video 2-way", "video 50-way", "frame 2-way", "frame 50-way", "SSIM", "CLIP-pcc"]
    assert f"| Wen 2018 test, mean of subjects | {' | '.join(columns)} |" in published
    assert "| MinD-Video (2023) | 0.839 |" in published and "this run" not in published.split("| Wen 2018")[1]
    assert "**not comparable** with this run unless it scored that test set with that protocol" in published
    assert "known labels as the true classes" not in published  # top-3 true classes here
    assert re.findall(r"[\w.-]+\.md\b", report) == []  # cites no file the package does not ship
    assert iio.imread(out / "best.gif", index=None).shape[0] == 4  # animated over the 4 frames
    assert iio.imread(out / "metrics.png").ndim == 3
    assert "SSIM (colour)" in result.stdout and "CLIP-pcc (adjacent-frame CLIP similarity)" in result.stdout


def test_folders_labels_and_a_pixel_classifier(tmp_path):
    train, labels = simulated_clips(24, 6, seed=0)
    classifier = PixelClassifier.fit(train.reshape(-1, 32, 32, 3), np.repeat(labels, 4), size=8)
    classifier.save(tmp_path / "pixel")
    test, test_labels = simulated_clips(6, 6, seed=3)
    for name, videos in (("gt", test), ("pred", noisy(test, 20, seed=4))):
        (tmp_path / name).mkdir()
        for i, clip in enumerate(videos):
            np.save(tmp_path / name / f"clip{i}.npy", clip)
    np.save(tmp_path / "labels.npy", test_labels)
    out = tmp_path / "report"
    result = run(
        "--pred",
        tmp_path / "pred",
        "--gt",
        tmp_path / "gt",
        "--classifier",
        tmp_path / "pixel",
        "--video-classifier",
        tmp_path / "pixel",
        "--labels",
        tmp_path / "labels.npy",
        "--n-way",
        2,
        "--n-way",
        5,
        "--rank-by",
        "psnr",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frame_nway"]["5"]["mean"] > 0.9 and metrics["settings"]["true_classes"] == "labels"
    assert metrics["per_clip"]["name"] == [f"clip{i}" for i in range(6)]
    report = (out / "report.md").read_text()
    assert "Chance level under this protocol: 2-way 0.500, 5-way 0.200" in report
    assert "| video 2-way | video 5-way | frame 2-way | frame 5-way |" in report  # every computed n-way is a column
    published = report.split("## Published results (Wen 2018 test set)")[1]
    assert "This run took known labels as the true classes (chance 1/n): another protocol, not comparable." in (
        published
    )


def bad_inputs(tmp_path, clips, models):
    """(name, extra arguments, expected message) — each must fail before writing anything."""
    np.save(tmp_path / "short.npy", clips[:5])
    np.save(tmp_path / "small.npy", clips[:, :, :32, :32])
    np.save(tmp_path / "float.npy", clips.astype(np.float32) / 255)
    np.save(tmp_path / "labels.npy", np.full(7, 99))  # the tiny ViT has 64 classes
    return [
        ("fewer clips", ["--pred", tmp_path / "short.npy"], "expected as many reconstructed clips"),
        ("other size", ["--pred", tmp_path / "small.npy"], "expected pred and gt with the same clip shape"),
        ("floats", ["--pred", tmp_path / "float.npy"], "expected pred as uint8"),
        ("no classifier", ["--classifier", tmp_path / "missing"], "expected a frame classifier folder"),
        ("no video classifier", ["--video-classifier", tmp_path / "nope"], "no such folder; pass --video-classifier"),
        ("clip not a clip", ["--clip", models["vit"]], "expected a CLIPModel folder"),
        ("rank without clip", ["--rank-by", "clip_similarity"], "expected a CLIP model to rank clips"),
        ("bad labels", ["--labels", tmp_path / "short.npy"], "expected one label per clip"),
        ("labels ≥ classes", ["--classifier", models["vit"], "--labels", tmp_path / "labels.npy"], "labels below"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(arrays, models, clips, tmp_path):
    pred, gt = arrays
    for name, extra, message in bad_inputs(tmp_path, clips, models):
        before = set(tmp_path.iterdir())
        args = ["--pred", pred, "--gt", gt, "--out", tmp_path / "report", "--no-progress", *extra]
        result = run(*args[2:] if extra[0] == "--pred" else args)
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.output
        assert set(tmp_path.iterdir()) == before, name  # no report folder, no temporary sibling


def test_a_failed_run_keeps_the_previous_report(arrays, tmp_path):
    pred, gt = arrays
    out = tmp_path / "report"
    assert run("--pred", pred, "--gt", gt, "--out", out, "--no-progress").exit_code == 0
    before = (out / "metrics.json").read_bytes()
    failed = run("--pred", pred, "--gt", gt, "--clip", tmp_path / "missing", "--out", out, "--overwrite")
    assert failed.exit_code == 2 and "missing" in failed.stderr
    assert (out / "metrics.json").read_bytes() == before
    assert run("--pred", gt, "--gt", gt, "--out", out, "--overwrite", "--no-progress").exit_code == 0
    assert {p.name for p in out.iterdir()} == REPORT_FILES and (out / "metrics.json").read_bytes() != before
