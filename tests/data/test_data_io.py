"""Loaders: files written by nibabel (and numpy/h5py) read back exactly; masks, atlases, TRs, CIFTI selection."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

from mindvideo.data.io import LoadConfig, load_array, load_cifti, load_mask, load_nifti, load_run, read_video
from mindvideo.errors import MindVideoError

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _nifti(path, data, tr=2.0, unit="sec"):
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", unit)
    img.header.set_zooms((2.0, 2.0, 2.0, tr))
    nib.save(img, path)
    return path


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, size=(6, 5, 4, 70)).astype(np.float32)  # 70 volumes: more than one read block
    mask = np.zeros((6, 5, 4), bool)
    mask[1:4, 2:5, 1:3] = True
    return data, mask


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_with_mask(tmp_path, volume, suffix):
    data, mask = volume
    path = _nifti(tmp_path / f"run{suffix}", data)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    run = load_nifti(path, load_mask(tmp_path / "mask.nii.gz"), block=32)
    assert run.data.shape == (70, mask.sum()) and run.data.dtype == np.float32 and run.tr == 2.0
    np.testing.assert_array_equal(run.data, data[mask].T)  # C order of the mask, all blocks
    assert load_nifti(path).data.shape == (70, 6 * 5 * 4)


def test_atlas_labels_by_number_and_name(tmp_path):
    atlas = np.zeros((6, 5, 4), np.int16)
    atlas[:2], atlas[4:] = 1, 3
    nib.save(nib.Nifti1Image(atlas, AFFINE), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.json").write_text(json.dumps({"V1": 1, "V3": 3}))
    by_name = load_mask(atlas=tmp_path / "atlas.nii.gz", labels=("V1", "V3"))
    by_number = load_mask(atlas=tmp_path / "atlas.nii.gz", labels=("1", "3"))
    assert by_name.count == by_number.count == 2 * 2 * 5 * 4
    with pytest.raises(MindVideoError, match="expected label 'V9'"):
        load_mask(atlas=tmp_path / "atlas.nii.gz", labels=("V9",))


def test_tr_in_milliseconds_and_mismatch(tmp_path, volume):
    path = _nifti(tmp_path / "ms.nii", volume[0][..., :5], tr=2000.0, unit="msec")
    assert load_nifti(path).tr == pytest.approx(2.0)
    with pytest.raises(MindVideoError, match=r"expected TR = 1\.5 s .* found TR = 2 s"):
        load_run(path, LoadConfig(tr=1.5))


def _cifti(path, data, step=2.0):
    left = np.zeros((3, 3, 2), bool)
    left[0] = True
    right = np.zeros_like(left)
    right[2] = True
    other = np.zeros_like(left)
    other[1, :, 0] = True
    models = (
        cifti2.BrainModelAxis.from_mask(left, "CortexLeft", AFFINE)
        + cifti2.BrainModelAxis.from_mask(right, "CortexRight", AFFINE)
        + cifti2.BrainModelAxis.from_mask(other, "Thalamus_Left", AFFINE)
    )
    series = cifti2.SeriesAxis(0.0, step, data.shape[0], "second")
    img = cifti2.Cifti2Image(data, cifti2.Cifti2Header.from_axes((series, models)))
    img.nifti_header.set_intent("ConnDenseSeries")
    nib.save(img, path)
    return path


def test_cifti_round_trip_and_grayordinate_selection(tmp_path):
    data = np.random.default_rng(1).normal(size=(300, 15)).astype(np.float32)  # 6 + 6 cortex, 3 thalamus
    path = _cifti(tmp_path / "run.dtseries.nii", data)
    run = load_cifti(path)
    assert run.tr == 2.0
    np.testing.assert_array_equal(run.data, data[:, :12])  # cortex only, in file order, across read blocks
    np.testing.assert_array_equal(load_cifti(path, "first:7").data, data[:, :7])
    np.testing.assert_array_equal(load_cifti(path, "all").data, data)
    np.testing.assert_array_equal(load_cifti(path, "thalamus_left").data, data[:, 12:])
    with pytest.raises(MindVideoError, match="expected at least 99 grayordinates"):
        load_cifti(path, "first:99")


def test_plain_arrays_npy_npz(tmp_path):
    run = np.random.default_rng(2).normal(size=(40, 9)).astype(np.float32)
    np.save(tmp_path / "run.npy", run)
    np.savez(tmp_path / "run.npz", bold=run)
    mapped = load_array(tmp_path / "run.npy")
    assert isinstance(mapped, np.memmap)  # memory-mapped, not read
    for name in ("run.npy", "run.npz"):
        np.testing.assert_array_equal(load_run(tmp_path / name, LoadConfig()).data, run)
    np.savez(tmp_path / "two.npz", a=run, b=run)
    with pytest.raises(MindVideoError, match="expected exactly one array"):
        load_run(tmp_path / "two.npz", LoadConfig())
    np.testing.assert_array_equal(load_run(tmp_path / "two.npz", LoadConfig(array_key="b")).data, run)


def test_video_sampling_holds_frames_per_tr(sim_root):
    video = read_video(sim_root / "stimuli" / "seg1.mp4", n_trs=4, tr=2.0, fps=3.0, size=16)
    assert video.shape == (4, 6, 16, 16, 3) and video.dtype == np.uint8
    full = read_video(sim_root / "stimuli" / "seg1.mp4", n_trs=1, tr=2.0, fps=6.0, size=16, start=2.0)
    np.testing.assert_array_equal(full[0, ::2], video[1])  # 3 Hz samples every other 6-fps frame
    with pytest.raises(MindVideoError, match="s of video"):
        read_video(sim_root / "stimuli" / "seg1.mp4", n_trs=999, tr=2.0, fps=3.0, size=16)


def test_plain_arrays_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    run = np.random.default_rng(3).normal(size=(40, 9)).astype(np.float32)
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.create_dataset("sub/bold", data=run)
        f.create_dataset("sub/other", data=run[:2])
    np.testing.assert_array_equal(load_run(tmp_path / "run.h5", LoadConfig(array_key="sub/bold")).data, run)
    with pytest.raises(MindVideoError, match="expected exactly one array"):
        load_run(tmp_path / "run.h5", LoadConfig())
