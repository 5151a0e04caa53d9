"""``mindvideo generate --data PREPARED [--eval REPORT]``: a prepared split reconstructed, batched and scored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.data import FMRITransform, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

FAST = ["--steps", "2", "--guidance", "3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny simulated dataset prepared with its videos, and a random tiny checkpoint with its data transform."""
    root = tmp_path_factory.mktemp("generate_eval")
    simulate(root / "sim", SimConfig.tiny(seed=2, formats=("arrays",)))
    prep = root / "prep"
    prepare(
        root / "sim" / "arrays",
        prep,
        config=PrepareConfig(layout="arrays", size=32),
        preprocess=preprocess_defaults("arrays"),
    )
    transform = FMRITransform.load(prep / "data_transform")
    ckpt = build_random_checkpoint(root / "ckpt", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(prep / "data_transform", ckpt / "data_transform")
    return ckpt, prep


def generate(ckpt, *args):
    return CliRunner().invoke(main, ["generate", "--checkpoint", str(ckpt), *FAST, *map(str, args)])


def test_reconstructs_and_scores_a_prepared_split(setup, tmp_path):
    ckpt, prep = setup
    gt = np.load(prep / "test" / "video.npy")
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(len(gt)) % 2)  # one per window of the whole split; --max-clips cuts both
    out, report = tmp_path / "recon.npy", tmp_path / "report"
    result = generate(ckpt, "--data", prep, "--max-clips", 4, "--out", out, "--eval", report, "--labels", labels)
    assert result.exit_code == 0, result.output
    video = np.load(out)
    assert video.shape == (4, 3, *gt.shape[1:4]) and video.dtype == np.float32  # frames and size follow the truth
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["clips"]["evaluated"] == 4 and metrics["settings"]["gt"] == str(prep)
    assert {"report.md", "best.gif", "metrics.png"} <= {p.name for p in report.iterdir()}
    assert "SSIM (colour)" in result.output


def test_batches_equal_separate_calls_with_the_split_negative(setup, tmp_path):
    ckpt, prep = setup
    out = tmp_path / "recon.npy"
    result = generate(ckpt, "--data", prep, "--max-clips", 3, "--batch-size", 2, "--frames", 2, "--out", out)
    assert result.exit_code == 0, result.output
    fmri, negative = np.load(prep / "test" / "fmri.npy")[:3], np.load(prep / "test" / "negative_fmri.npy")
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    cfg = GenerationConfig(num_frames=2, num_inference_steps=2, guidance_scale=3.0, seed=3407)
    expected = np.concatenate(
        [pipe(fmri[:2], negative, cfg, output="float"), pipe(fmri[2:], negative, cfg, output="float")]
    )
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_negative_condition_of_the_split_and_of_the_data_transform(setup, tmp_path):
    """generate names the negative it used (console and OUT.json): the split's negative_fmri.npy with --data, else the
    checkpoint's data transform mean window on the pipeline and on the engine's torch backend alike."""
    ckpt, prep = setup
    result = generate(ckpt, "--data", prep, "--max-clips", 2, "--frames", 2, "--out", tmp_path / "d.npy")
    assert result.exit_code == 0, result.output
    split_negative = prep / "test" / "negative_fmri.npy"
    assert f"negative condition: the prepared split's negative_fmri.npy ({split_negative})" in result.output
    record = json.loads((tmp_path / "d.npy.json").read_text())
    assert record["negative_condition"] == {
        "source": "split",
        "path": str(split_negative),
        "text": f"the prepared split's negative_fmri.npy ({split_negative})",
    }
    assert record["input"] == {"data": str(prep), "split": "test"} and record["windows"] == 2
    windows = np.load(prep / "test" / "fmri.npy")[:2]
    np.save(tmp_path / "w.npy", windows)
    line = f"negative condition: the mean training window of {ckpt / 'data_transform'}"
    for backend in ("pytorch", "torch"):
        out = tmp_path / f"{backend}.npy"
        result = generate(ckpt, "--fmri", tmp_path / "w.npy", "--frames", 2, "--backend", backend, "--out", out)
        assert result.exit_code == 0 and line in result.output, result.output
        assert json.loads((tmp_path / f"{backend}.npy.json").read_text())["negative_condition"]["source"] == (
            "data_transform"
        )
    negative = FMRITransform.load(ckpt / "data_transform").negative_fmri
    cfg = GenerationConfig(num_frames=2, num_inference_steps=2, guidance_scale=3.0, seed=3407)
    expected = MindVideoPipeline.from_pretrained(ckpt)(windows, negative, cfg, output="float")
    np.testing.assert_allclose(np.load(tmp_path / "pytorch.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "torch.npy"), expected, atol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fmri", "x.npy", "--eval", "r"], "expected --data with --eval"),
        (["--data", "PREP", "--classifier", "c"], "expected --eval REPORT"),
        (["--data", "PREP", "--eval", "r", "--frames", "3"], "expected clips shaped like the ground truth"),
        (["--data", "PREP", "--split", "nope"], "nope/fmri.npy"),
        (["--data", "PREP", "--eval", "r", "--classifier", "missing"], "missing"),
        (["--data", "PREP", "--eval", "r", "--labels", "LABELS"], "one label per clip"),
    ],
)
def test_bad_combinations_exit_2_and_write_nothing(setup, tmp_path, args, message):
    ckpt, prep = setup
    np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    swap = {"PREP": prep, "LABELS": tmp_path / "labels.npy", "r": tmp_path / "r", "c": tmp_path / "c"}
    args = [swap.get(a, tmp_path / a if a in ("x.npy", "missing") else a) for a in args]
    result = generate(ckpt, *args, "--out", tmp_path / "out.npy")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "r").exists()


def test_per_window_negatives_are_cut_like_the_batches(setup, tmp_path):
    ckpt, prep = setup
    fmri = np.load(prep / "test" / "fmri.npy")[:3]
    negative = np.random.default_rng(1).standard_normal(fmri.shape).astype(np.float32)
    np.save(tmp_path / "neg.npy", negative)
    out = tmp_path / "recon.npy"
    args = [
        "--data",
        prep,
        "--max-clips",
        3,
        "--batch-size",
        2,
        "--frames",
        2,
        "--negative-fmri",
        tmp_path / "neg.npy",
    ]
    result = generate(ckpt, *args, "--out", out)
    assert result.exit_code == 0, result.output
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    cfg = GenerationConfig(num_frames=2, num_inference_steps=2, guidance_scale=3.0, seed=3407)
    expected = [pipe(fmri[:2], negative[:2], cfg, output="float"), pipe(fmri[2:], negative[2:], cfg, output="float")]
    np.testing.assert_allclose(np.load(out), np.concatenate(expected), atol=1e-6)


def test_labels_for_the_clips_or_for_the_whole_split(setup, tmp_path):
    ckpt, prep = setup
    windows = len(np.load(prep / "test" / "fmri.npy", mmap_mode="r"))
    for count in (2, windows):
        np.save(tmp_path / f"l{count}.npy", np.arange(count) % 2)
        args = ["--data", prep, "--max-clips", 2, "--labels", tmp_path / f"l{count}.npy"]
        result = generate(ckpt, *args, "--out", tmp_path / f"o{count}.npy", "--eval", tmp_path / f"r{count}")
        assert result.exit_code == 0, result.output


def test_empty_fmri_exits_2(setup, tmp_path):
    ckpt, _ = setup
    np.save(tmp_path / "empty.npy", np.zeros((0, 2, 8), np.float32))
    result = generate(ckpt, "--fmri", tmp_path / "empty.npy", "--out", tmp_path / "o.npy")
    assert result.exit_code == 2 and "at least one fMRI window" in result.output and not (tmp_path / "o.npy").exists()


def test_report_folder_is_checked_before_generating_and_replaced_only_with_overwrite(setup, tmp_path):
    ckpt, prep = setup
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    out = tmp_path / "recon.npy"
    refused = generate(ckpt, "--data", prep, "--max-clips", 2, "--out", out, "--eval", report)
    assert refused.exit_code == 2 and "notes.txt" in refused.output
    assert not out.exists() and (report / "notes.txt").read_text() == "mine"  # refused before any generation

    (report / "notes.txt").unlink()
    first = generate(ckpt, "--data", prep, "--max-clips", 2, "--out", out, "--eval", report)
    assert first.exit_code == 0, first.output
    out.unlink()
    again = generate(ckpt, "--data", prep, "--max-clips", 2, "--out", out, "--eval", report)
    assert again.exit_code == 2 and "--overwrite" in again.output and not out.exists()
    replaced = generate(ckpt, "--data", prep, "--max-clips", 2, "--out", out, "--eval", report, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert (report / "metrics.json").exists()
