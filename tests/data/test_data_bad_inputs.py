"""Every bad input: a one-line error naming what was expected and found, exit code 2, and no output folder."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.data import FMRITransform

NIFTI = ("--fmri-format", "nifti")


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into output unless told
    except TypeError:
        return CliRunner()  # click ≥ 8.2 keeps result.stderr apart


def _prepare(src, out, *options: str):
    args = [
        "data",
        "prepare",
        "--layout",
        "wen",
        "--src",
        str(src),
        "--out",
        str(out),
        "--size",
        "16",
        "--no-video",
        *options,
    ]
    return _runner().invoke(main, args)


def _assert_refused(result, out, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: expected"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left


def _run_path(root, name="seg2", repeat=1, suffix=".nii.gz"):
    return root / "subject1" / "fmri" / name / "nifti" / f"{name}_{repeat}{suffix}"


def test_truncated_uncompressed_nifti(mini_wen, tmp_path):
    src = mini_wen()
    gz = _run_path(src)
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    _run_path(src, suffix=".nii").write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, *NIFTI), out, "truncated", "seg2_1.nii")


def test_truncated_gzip_nifti(mini_wen, tmp_path):
    src = mini_wen()
    gz = _run_path(src)
    gz.write_bytes(gz.read_bytes()[:-2000])
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, *NIFTI), out, "seg2_1.nii.gz", "unreadable")


def test_corrupt_nifti(mini_wen, tmp_path):
    src = mini_wen()
    _run_path(src).write_bytes(b"not a nifti at all" * 100)
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, *NIFTI), out, "expected a 4-D NIfTI fMRI run")


def test_mask_shape_mismatch(mini_wen, tmp_path):
    src = mini_wen()
    wrong = tmp_path / "wrong_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), wrong)
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, *NIFTI, "--mask", str(wrong)), out, "mask shape (5, 5, 5)", "resample")


def test_tr_mismatch(mini_wen, tmp_path):
    src = mini_wen()
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, "--tr", "1.5"), out, "expected TR = 1.5 s", "TR = 2 s")


def _poison_voxel(src, value: float) -> None:
    """Set one visual voxel of run seg2_1 to ``value`` (NaN) or a constant."""
    path = _run_path(src)
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    mask = np.asarray(nib.load(src / "subject1" / "anat" / "visual_mask.nii.gz").dataobj) > 0
    x, y, z = np.argwhere(mask)[3]
    if np.isnan(value):
        data[x, y, z, 10] = np.nan
    else:
        data[x, y, z, :] = value
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


@pytest.mark.parametrize("value", [float("nan"), 500.0])
def test_nan_or_constant_voxel_is_dropped_with_a_log_line_or_refused(mini_wen, tmp_path, caplog, value):
    src = mini_wen()
    _poison_voxel(src, value)
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, *NIFTI, "--bad-voxels", "error", "--select", "all"), out, "NaN/constant")
    with caplog.at_level(logging.WARNING, logger="mindvideo.data.prepare"):
        result = _prepare(src, out, *NIFTI, "--select", "all")
    assert result.exit_code == 0, result.output
    assert "dropping 1 of 136 voxels" in caplog.text
    transform = FMRITransform.load(out / "data_transform")
    assert transform.n_raw == 136 and 3 not in transform.keep and len(transform.keep) == 135


def test_fewer_volumes_than_the_window(mini_wen, tmp_path):
    src = mini_wen()
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, "--window", "40", "--select", "all"), out, "window 40", "found 30")


def test_runs_shorter_than_the_stimulus(mini_wen, tmp_path):
    src = mini_wen()
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, "--trim-start", "8"), out, "expected at least 38 volumes", "found 35")


def test_mismatched_run_counts(mini_wen, tmp_path):
    src = mini_wen()
    (src / "subject1" / "fmri" / "seg3" / "cifti" / "seg3_2_Atlas.dtseries.nii").unlink()
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out), out, "same number of train runs", "'seg3': 1")


def test_stimulus_without_runs(mini_wen, tmp_path):
    src = mini_wen()
    (src / "stimuli" / "seg9.mp4").write_bytes((src / "stimuli" / "seg1.mp4").read_bytes())
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out), out, "expected cifti runs for stimulus seg9.mp4")


def test_no_reproducible_voxels_suggests_topk(mini_wen, tmp_path):
    src = mini_wen(("seg1", "seg2", "test1"))
    out = tmp_path / "out"
    _assert_refused(_prepare(src, out, "--alpha", "1e-9"), out, "Bonferroni", "--select topk")


def test_arrays_with_mismatched_segments(tmp_path):
    src = tmp_path / "arrays"
    src.mkdir()
    for split in ("train", "test"):
        np.save(src / f"fmri_{split}_subject1.npy", np.zeros((3, 10, 20), np.float32))
        np.save(src / f"video_{split}_16_3hz.npy", np.zeros((2, 10, 6, 16, 16, 3), np.uint8))
    out = tmp_path / "out"
    result = _runner().invoke(main, ["data", "prepare", "--layout", "arrays", "--src", str(src), "--out", str(out)])
    _assert_refused(result, out, "with the same S, T", "fmri (3, 10, 20)")


def test_failed_prepare_keeps_an_existing_output(mini_wen, tmp_path):
    src = mini_wen()
    out = tmp_path / "out"
    assert _prepare(src, out, "--select", "all").exit_code == 0
    before = (out / "summary.json").read_bytes()
    result = _prepare(src, out, "--tr", "3", "--overwrite")
    assert result.exit_code == 2 and "expected TR = 3" in result.stderr
    assert (out / "summary.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_bad_transform_folder(tmp_path, prepared_wen):
    import shutil

    copy = tmp_path / "data_transform"
    shutil.copytree(prepared_wen / "data_transform", copy)
    transform = FMRITransform.load(copy)
    with pytest.raises(Exception, match=f"expected {transform.n_raw} raw voxels per frame"):
        transform.apply(np.zeros((10, transform.n_raw + 1), np.float32))
    (copy / "state.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(Exception, match="expected a readable"):
        FMRITransform.load(copy)


# --------------------------------------------------------------------------------------------------- custom layout

CUSTOM_HEADER = "run\tonset\tstimulus\tsplit"


def _custom_rows(src) -> list[str]:
    """One events.tsv row per CIFTI run of the mini dataset (paths relative to --src)."""
    rows = []
    for folder in sorted((src / "subject1" / "fmri").iterdir()):
        split = "test" if folder.name.startswith("test") else "train"
        for run in sorted((folder / "cifti").glob("*.nii")):
            rows.append(f"{run.relative_to(src)}\t0\tstimuli/{folder.name}.mp4\t{split}")
    return rows


def _prepare_custom(src, out, lines: list[str]):
    (src / "events.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["data", "prepare", "--layout", "custom", "--src", str(src), "--out", str(out), "--size", "16"]
    return _runner().invoke(main, [*args, "--no-video", "--select", "all"])


@pytest.mark.parametrize(
    "damage, fragments",
    [
        ("short", ("expected 4 tab-separated fields on line 3 of", "events.tsv", "found 2")),
        ("long", ("expected 4 tab-separated fields on line 3 of", "found 5")),
        ("duplicate", ("expected each showing once in", "repeating line 2 (run 'subject1/fmri/seg1/")),
        ("no onset", ("expected a non-negative number of seconds in column 'onset' on line 3", "'soon'")),
        ("split", ("expected split train or test on line 3", "'validation'")),
    ],
)
def test_malformed_events_rows_are_refused_by_line(mini_wen, tmp_path, damage, fragments):
    src, out = mini_wen(), tmp_path / "out"
    rows = _custom_rows(src)
    run, onset, stimulus, split = rows[1].split("\t")
    rows[1] = {
        "short": f"{run}\t{onset}",
        "long": f"{rows[1]}\textra",
        "duplicate": rows[1],
        "no onset": f"{run}\tsoon\t{stimulus}\t{split}",
        "split": f"{run}\t{onset}\t{stimulus}\tvalidation",
    }[damage]
    if damage == "duplicate":
        rows.append(rows[0])
        fragments = (*fragments, f"found line {len(rows) + 1} repeating")
    _assert_refused(_prepare_custom(src, out, [CUSTOM_HEADER, *rows]), out, *fragments)


def test_missing_stimulus_of_the_custom_layout_is_named_with_its_line(mini_wen, tmp_path):
    src, out = mini_wen(), tmp_path / "out"
    (src / "stimuli" / "seg2.mp4").unlink()
    rows = _custom_rows(src)
    line = 2 + next(i for i, row in enumerate(rows) if "seg2.mp4" in row)
    result = _prepare_custom(src, out, [CUSTOM_HEADER, *rows])
    _assert_refused(result, out, f"expected the stimulus file named on line {line} of", "seg2.mp4")


def test_comments_and_blank_lines_in_events_are_skipped(mini_wen, tmp_path):
    src = mini_wen(("seg1", "seg2", "test1"))
    rows = _custom_rows(src)
    plain = _prepare_custom(src, tmp_path / "plain", [CUSTOM_HEADER, *rows])
    assert plain.exit_code == 0, plain.output
    lines = ["# onsets of subject 1", "", CUSTOM_HEADER, "  # the training runs", *rows[:2], "   ", *rows[2:], ""]
    commented = _prepare_custom(src, tmp_path / "commented", lines)
    assert commented.exit_code == 0 and not commented.stderr.strip(), commented.stderr
    for split in ("train", "test"):
        same = (tmp_path / "plain" / split / "fmri.npy").read_bytes() == (
            tmp_path / "commented" / split / "fmri.npy"
        ).read_bytes()
        assert same, split


def test_deleted_stimulus_video_of_the_wen_layout_is_refused(mini_wen, tmp_path):
    src, out = mini_wen(), tmp_path / "out"
    (src / "stimuli" / "seg2.mp4").unlink()
    _assert_refused(_prepare(src, out), out, "expected a stimulus video for every segment", "no seg2.mp4")


def test_stale_staging_folder_of_a_killed_prepare_is_removed_by_the_next_run(mini_wen, tmp_path):
    """A prepare killed with SIGKILL leaves its hidden staging folder; the next run into the same --out removes it
    (and nothing else that is hidden there)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src, out = mini_wen(("seg1", "seg2", "test1")), tmp_path / "out"
    script = "import sys, time; from mindvideo.fsutil import atomic_folder\n"
    script += "with atomic_folder(sys.argv[1], 'data prepare') as tmp:\n    print(tmp, flush=True); time.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    staging = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert os.path.isdir(staging)
    mine = tmp_path / ".out.mine"  # a user's hidden folder with a similar name stays
    mine.mkdir()
    time.sleep(0.05)
    args = ["data", "prepare", "--layout", "wen", "--src", src, "--out", out, "--size", "16", "--no-video"]
    command = [sys.executable, "-m", "mindvideo", "-v", *map(str, args), "--select", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"removing {staging}, the unfinished output of a killed run" in result.stderr
    assert not os.path.exists(staging) and mine.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [".out.mine"]


def test_sigterm_during_prepare_removes_the_staging_folder(mini_wen, tmp_path):
    """SIGTERM mid-run: exit code 143, one warning line, no output and no hidden staging folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src, out = mini_wen(), tmp_path / "out"
    args = ["data", "prepare", "--layout", "wen", "--src", src, "--out", out, "--size", "32", "--select", "all"]
    child = subprocess.Popen(
        [sys.executable, "-m", "mindvideo", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")] and child.poll() is None:
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 143, stderr
    assert "terminated: removing the unfinished" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini"]
