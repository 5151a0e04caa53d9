"""``generate --scan``: a raw simulated CIFTI run through the checkpoint's fitted data transform."""

from __future__ import annotations

import shutil

import nibabel as nib
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
        preprocess=preprocess_defaults("wen", lag=2),  # a lag, so that the window rule shows
    )
    transform = FMRITransform.load(root / "prep" / "data_transform")
    ckpt = build_random_checkpoint(root / "ckpt", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(root / "prep" / "data_transform", ckpt / "data_transform")
    run = root / "sim" / "subject1" / "fmri" / "test1" / "cifti" / "test1_1_Atlas.dtseries.nii"
    return ckpt, run, transform


def expected_windows(run, transform) -> np.ndarray:
    """The training preprocessing written out in plain numpy on the raw CIFTI file: cortical grayordinates,
    NaN → 0, a least-squares polynomial (in t) removed per voxel, z-score over time, the fitted voxel selection and
    normalisation, the first voxels repeated up to a multiple of the patch size, windows of W TRs from t + lag
    (clamped at the last TR)."""
    cfg = transform.preprocess
    assert transform.loading.cifti_select == "cortex" and cfg.detrend_order >= 1 and cfg.zscore
    image = nib.load(str(run))
    names = np.asarray(image.header.get_axis(1).name).astype(str)
    raw = np.nan_to_num(np.asarray(image.get_fdata(), np.float64)[:, np.char.find(names, "CORTEX") >= 0])
    count = len(raw)
    t = np.arange(count, dtype=np.float64)
    powers = np.stack([((t - t.mean()) / count) ** k for k in range(cfg.detrend_order + 1)], axis=1)
    residual = raw - powers @ np.linalg.lstsq(powers, raw, rcond=None)[0]
    scaled = (residual - residual.mean(0)) / residual.std(0)
    model = (scaled[:, transform.keep] - transform.mean) / transform.std
    pad = transform.num_voxels - model.shape[1]
    model = np.concatenate([model, model[:, :pad]], axis=1)
    rows = [[min(i + cfg.lag + k, count - 1) for k in range(cfg.window_size)] for i in range(count - cfg.lag)]
    return model[np.array(rows)]


def test_scan_windows_follow_the_training_preprocessing(scan_setup):
    ckpt, run, transform = scan_setup
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    expected = expected_windows(run, transform)
    assert transform.preprocess.lag > 0 and transform.num_voxels > len(transform.keep)  # both rules exercised
    windows = pipe.windows_from_scan(run, 2, 5)
    assert windows.shape == (3, transform.window_size, transform.num_voxels) and windows.dtype == np.float32
    np.testing.assert_allclose(windows, expected[2:5], rtol=0, atol=1e-4)
    np.testing.assert_allclose(pipe.windows_from_scan(run), expected, rtol=0, atol=1e-4)


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
