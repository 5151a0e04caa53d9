"""Fuzzing the loaders: random bytes, mutated valid files and odd arrays never raise anything but MindVideoError."""

from __future__ import annotations

import gzip
import io
import tempfile
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nibabel import cifti2

from mindvideo.data.io import LoadConfig, load_mask, load_run
from mindvideo.errors import MindVideoError

SUFFIXES = (".nii", ".nii.gz", ".dtseries.nii", ".npy", ".npz", ".h5")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOADING = LoadConfig(tr_tolerance=float("inf"))


def _load(data: bytes, suffix: str, loading: LoadConfig = LOADING) -> None:
    """Write ``data`` as a run file and load it; success or MindVideoError are the only allowed outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"run{suffix}"
        path.write_bytes(data)
        try:
            run = load_run(path, loading)
        except MindVideoError as exc:
            assert str(exc).startswith("expected"), exc
            return
        assert run.data.ndim == 2 and run.data.dtype == np.float32


@cache
def _valid_files() -> dict[str, bytes]:
    """Small valid files of every supported kind, the seeds for mutation."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, size=(3, 3, 2, 4)).astype(np.float32)
    nifti = nib.Nifti1Image(data, np.eye(4))
    nifti.header.set_zooms((1.0, 1.0, 1.0, 2.0))
    raw = nifti.to_bytes()
    models = cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 1), bool), "CortexLeft", np.eye(4))
    header = cifti2.Cifti2Header.from_axes((cifti2.SeriesAxis(0, 2.0, 4, "second"), models))
    cifti = cifti2.Cifti2Image(data.reshape(-1, 4)[:4].T.copy(), header)
    cifti.nifti_header.set_intent("ConnDenseSeries")
    buffer = io.BytesIO()
    np.save(buffer, data.reshape(-1, 4).T)
    with tempfile.TemporaryDirectory() as tmp:
        nib.save(cifti, Path(tmp) / "x.dtseries.nii")
        cifti_bytes = (Path(tmp) / "x.dtseries.nii").read_bytes()
    return {".nii": raw, ".nii.gz": gzip.compress(raw), ".dtseries.nii": cifti_bytes, ".npy": buffer.getvalue()}


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(data, suffix):
    _load(data, suffix)


@FUZZ
@given(
    kind=st.sampled_from([".nii", ".nii.gz", ".dtseries.nii", ".npy", "gz-stream"]),
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 2**16)),
)
def test_mutated_valid_files(kind, edits, cut):
    """Byte flips (header fields included: dims, datatype, offsets) and truncation of valid files."""
    files = _valid_files()
    seed = bytearray(files[".nii" if kind in (".nii.gz", "gz-stream") else kind])
    if kind == "gz-stream":  # corrupt the compressed stream itself
        seed = bytearray(files[".nii.gz"])
    for position, value in edits:
        seed[position % len(seed)] = value
    if cut is not None:
        seed = seed[: cut % (len(seed) + 1)]
    data = gzip.compress(bytes(seed)) if kind == ".nii.gz" else bytes(seed)
    _load(data, ".nii.gz" if kind in (".nii.gz", "gz-stream") else kind)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(["float32", "float64", "int16", "uint8", "bool", "complex64", "U3"]),
    fill=st.sampled_from([0.0, np.nan, np.inf, 1e30]),
)
def test_odd_arrays(shape, dtype, fill):
    buffer = io.BytesIO()
    with np.errstate(invalid="ignore"):  # inf/nan cast to integers on purpose
        np.save(buffer, np.full(shape, fill if dtype not in ("bool", "U3") else 1).astype(dtype))
    _load(buffer.getvalue(), ".npy")


@FUZZ
@given(mask_shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)), ones=st.booleans())
def test_masks_of_any_shape(mask_shape, ones):
    with tempfile.TemporaryDirectory() as tmp:
        mask = Path(tmp) / "mask.nii.gz"
        nib.save(nib.Nifti1Image(np.full(mask_shape, ones, np.uint8), np.eye(4)), mask)
        try:
            load_mask(mask)
        except MindVideoError:
            return
    _load(_valid_files()[".nii"], ".nii", LOADING.replace(mask=str(mask)))
