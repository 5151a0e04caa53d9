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


# --------------------------------------------------------------------------------------------------- events.tsv

FIELD = st.text(alphabet=st.sampled_from("ab01.5 #\t\r\n/-_éx"), max_size=6)
NAME = st.text(alphabet=st.sampled_from("abcXYZ019_-./"), min_size=1, max_size=8).filter(
    lambda s: s.strip() and s.strip() != "n/a" and not s.strip().startswith("#")
)
ROW = st.tuples(NAME, st.integers(0, 500), NAME)
FILLER = st.sampled_from(["", "   ", "\t", "# a comment", "  # indented\tcomment", "#run\tonset"])


@FUZZ
@given(lines=st.lists(st.lists(FIELD, max_size=5).map("\t".join), max_size=8), header=st.booleans())
def test_events_parser_random_tables(lines, header):
    """Any text: rows or one MindVideoError whose message is one line naming the file (and the line of a row)."""
    from mindvideo.data.events import parse_events

    text = "\n".join((["run\tonset\tstimulus"] if header else []) + lines)
    try:
        events = parse_events(text, "events.tsv")
    except MindVideoError as exc:
        message = str(exc)
        assert message.startswith("expected") and "events.tsv" in message, message
        assert "\n" not in message and "\r" not in message, message
        return
    content = [n for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1)]
    assert len({(e.run, e.onset, e.stimulus) for e in events}) == len(events)  # no duplicate survives
    assert all(e.line in content and e.run and e.stimulus and e.onset >= 0 for e in events)


@FUZZ
@given(
    rows=st.lists(ROW, min_size=1, max_size=6, unique_by=lambda r: (r[0].strip(), r[1], r[2].strip())),
    filler=st.lists(st.tuples(st.integers(0, 7), FILLER), max_size=4),
    damage=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.sampled_from(["drop", "extra", "duplicate"]))),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_events_parser_valid_tables_with_damage(rows, filler, damage, newline):
    """A valid table with blank/comment lines anywhere parses to exactly its rows; a row with a missing or extra
    field, or a repeated row, is refused naming its line."""
    from mindvideo.data.events import parse_events

    lines = ["run\tonset\tstimulus"] + [f"{run}\t{onset}\t{stimulus}" for run, onset, stimulus in rows]
    bad = None
    if damage is not None:
        index, kind = damage[0] % len(rows) + 1, damage[1]
        if kind == "duplicate":
            lines.append(lines[index])
            bad = len(lines) - 1
        else:
            lines[index] = lines[index].rsplit("\t", 1)[0] if kind == "drop" else lines[index] + "\textra"
            bad = index
    for position, text in sorted(filler, reverse=True):
        lines.insert(min(position, len(lines)), text)
        if bad is not None and position <= bad:
            bad += 1
    table = newline.join(lines) + newline
    if bad is None:
        events = parse_events(table, "events.tsv")
        assert [(e.run, int(e.onset), e.stimulus) for e in events] == [(r.strip(), o, s.strip()) for r, o, s in rows]
        return
    try:
        parse_events(table, "events.tsv")
    except MindVideoError as exc:
        assert f"line {bad + 1} " in str(exc) and "\n" not in str(exc), (str(exc), table)
    else:
        raise AssertionError(f"accepted a damaged table: {table!r}")
