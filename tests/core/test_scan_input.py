"""``generate --scan``: a raw simulated CIFTI run through the checkpoint's fitted data transform."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.data import FMRITransform, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
from mindvideo.pipeline import MindVideoPipeline


@pytest.fixture(scope="module")
def scan_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    simulate(root / "sim", SimConfig.tiny(seed=3))
    prepare(
        root / "sim",
        root / "prep",
        config=PrepareConfig(layout="wen", size=32, video=False),
        preprocess=preprocess_defaults("wen"),
    )
    transform = FMRITransform.load(root / "prep" / "data_transform")
    ckpt = build_random_checkpoint(root / "ckpt", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(root / "prep" / "data_transform", ckpt / "data_transform")
    run = root / "sim" / "subject1" / "fmri" / "test1" / "cifti" / "test1_1_Atlas.dtseries.nii"
    return ckpt, run, transform


def test_scan_windows_equal_the_prepared_transform(scan_setup):
    ckpt, run, transform = scan_setup
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    windows = pipe.windows_from_scan(run, 2, 5)
    expected = transform.windows(transform.apply(transform.load_run(run)))[2:5]
    np.testing.assert_array_equal(windows, expected)
    assert windows.shape == (3, transform.window_size, transform.num_voxels)


def test_generate_from_scan(scan_setup, tmp_path):
    ckpt, run, _ = scan_setup
    out = tmp_path / "clip.npy"
    args = ["generate", "--checkpoint", ckpt, "--scan", run, "--trs", "0:2", "--frames", 2, "--steps", 1, "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (2, 3, 2, 64, 64)


@pytest.mark.parametrize("trs", ["5", "a:b", "9999:"])
def test_bad_tr_range(scan_setup, tmp_path, trs):
    ckpt, run, _ = scan_setup
    out = tmp_path / "clip.npy"
    result = CliRunner().invoke(
        main, ["generate", "--checkpoint", str(ckpt), "--scan", str(run), "--trs", trs, "--out", str(out)]
    )
    assert result.exit_code == 2 and "--trs" in result.output and not out.exists()


def test_scan_needs_a_transform(tiny_ckpt, scan_setup, tmp_path):
    _, run, _ = scan_setup
    result = CliRunner().invoke(
        main, ["generate", "--checkpoint", str(tiny_ckpt), "--scan", str(run), "--out", str(tmp_path / "x.npy")]
    )
    assert result.exit_code == 2 and "data_transform" in result.output
