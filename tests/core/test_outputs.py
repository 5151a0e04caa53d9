"""Output folders (``--out``): a folder mindvideo did not write is never replaced, an earlier output of the same
command only with ``--overwrite``, the current folder never; no hidden temporary folder is left after a refusal or
a failure; outputs get the permissions of new files under the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.data import SimConfig, simulate
from mindvideo.demo import check_assets_folder, default_assets
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import MARKER, atomic_folder, check_output_folder, temp_file

ASSETS = default_assets()


@pytest.fixture(autouse=True)
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny simulated dataset (arrays layout) for `data prepare`, and clips for `eval`."""
    root = tmp_path_factory.mktemp("inputs")
    simulate(root / "sim", SimConfig.tiny(seed=4, formats=("arrays",), size=16, classes=2))
    clips = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    np.save(root / "gt.npy", clips)
    np.save(root / "pred.npy", np.clip(clips.astype(int) + 20, 0, 255).astype(np.uint8))
    return {"sim": root / "sim", "gt": root / "gt.npy", "pred": root / "pred.npy"}


def command_args(name: str, inputs: dict[str, Path], out: str | Path) -> list[str]:
    """The smallest invocation of each command writing a folder to ``out``."""
    args = {
        "data simulate": ["data", "simulate", "--tiny", "--formats", "arrays", "--size", "16", "--classes", "2"],
        "data prepare": ["data", "prepare", "--layout", "arrays", "--src", inputs["sim"] / "arrays", "--size", "16"],
        "eval": ["eval", "--pred", inputs["pred"], "--gt", inputs["gt"], "--n-way", "2", "--no-progress"],
        "demo": ["demo", "--clips", "1", "--steps", "1", "--no-mp4"],
        "explain": ["explain", "--checkpoint", ASSETS / "checkpoint", "--fmri", ASSETS / "test_set.npz"],
    }[name]
    if name == "explain":
        args += ["--max-windows", "2"]
    return [str(a) for a in [*args, "--out", out]]


def run(name: str, inputs: dict[str, Path], out: str | Path, *extra: str):
    return CliRunner().invoke(main, [*command_args(name, inputs, out), *extra])


COMMANDS = ["data simulate", "data prepare", "eval", "demo", "explain"]


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: expected"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def modes(folder: Path) -> set[tuple[str, int]]:
    """The distinct (kind, permission bits) of ``folder`` and everything under it."""
    found = {("dir", stat.S_IMODE(folder.stat().st_mode))}
    for path in folder.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", stat.S_IMODE(path.stat().st_mode)))
    return found


# --------------------------------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("name", COMMANDS)
def test_a_folder_that_is_not_ours_is_refused_and_kept(name, inputs, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"my notes\n")
    for extra in ((), ("--overwrite",)):
        result = run(name, inputs, out, *extra)
        assert_refused(result, "not marked as a mindvideo output", "'notes.txt'", str(out))
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
        assert (out / "notes.txt").read_bytes() == b"my notes\n"
        assert hidden(tmp_path) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_an_earlier_output_is_replaced_only_with_overwrite(name, inputs, tmp_path):
    out = tmp_path / "out"
    first = run(name, inputs, out)
    assert first.exit_code == 0, first.output
    assert json.loads((out / MARKER).read_text())["command"] == name
    (out / "stale.txt").write_text("left by the first run")

    again = run(name, inputs, out)
    assert_refused(again, "--overwrite", f"earlier `mindvideo {name}` output")
    assert (out / "stale.txt").is_file()

    replaced = run(name, inputs, out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "stale.txt").exists() and json.loads((out / MARKER).read_text())["command"] == name
    assert hidden(tmp_path) == []
    assert modes(out) == {("dir", 0o755), ("file", 0o644)}


@pytest.mark.parametrize("name", COMMANDS)
def test_the_current_folder_is_refused(name, inputs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..") if name == "data simulate" else (".",):
        assert_refused(run(name, inputs, out), "other than the current folder")
        assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_the_output_of_another_command_is_refused(inputs, tmp_path):
    result = run("data prepare", inputs, inputs["sim"], "--overwrite")
    assert_refused(result, "holding the output of `mindvideo data simulate`")
    assert (inputs["sim"] / "dataset.json").is_file() and hidden(inputs["sim"].parent) == []


def test_a_file_or_a_link_is_refused(inputs, tmp_path):
    (tmp_path / "file").write_text("mine")
    assert_refused(run("eval", inputs, tmp_path / "file", "--overwrite"), "a file at")
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert_refused(run("eval", inputs, tmp_path / "link", "--overwrite"), "symbolic link")
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "target").iterdir()) == []


def test_export_assets_replace_only_earlier_assets(tmp_path):
    check_assets_folder(default_assets())  # the shipped assets (no marker) are recognised by their recipe.json
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    args = ["train", "recipe", "demo", "--quick", "--out", tmp_path / "run", "--export-assets", tmp_path / "mine"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert_refused(result, "'notes.txt'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # refused before the recipe starts


# --------------------------------------------------------------------------------------------------- the mechanism


def test_an_empty_folder_is_used_and_a_marker_only_folder_is_ours(tmp_path):
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", "eval")
    with atomic_folder(tmp_path / "empty", "eval") as tmp:
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [MARKER, "a.txt"]
    with pytest.raises(MindVideoError, match="pass --overwrite"):
        check_output_folder(tmp_path / "empty", "eval")
    (tmp_path / "empty" / MARKER).write_text("not json")
    with pytest.raises(MindVideoError, match="not marked as a mindvideo output"):
        check_output_folder(tmp_path / "empty", "eval", overwrite=True)


def test_a_failure_inside_the_block_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, "eval") as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out, "eval", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.txt"] and hidden(tmp_path) == []


def test_a_folder_changed_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MindVideoError, match=r"'late\.txt'"), atomic_folder(out, "eval") as tmp:
        (tmp / "result.txt").write_text("result")
        out.mkdir()
        (out / "late.txt").write_text("written meanwhile")
    assert sorted(p.name for p in out.iterdir()) == ["late.txt"] and hidden(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_temporary_files_and_folders_follow_the_umask(tmp_path, mask):
    os.umask(mask)
    tmp = temp_file(tmp_path / "clip.mp4")
    assert tmp.name.startswith(".clip.") and tmp.suffix == ".mp4"
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o666 & ~mask
    with atomic_folder(tmp_path / "folder") as folder:
        pass
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
    assert not folder.exists()


def _staging(tmp_path: Path, name: str, **record) -> Path:
    """A hidden folder shaped like a staging folder, with the given marker fields (no marker without any)."""
    import socket

    folder = tmp_path / name
    folder.mkdir()
    (folder / "part.npy").write_bytes(b"data")
    if record:
        record = {"pid": 1, "host": socket.gethostname(), "created": 0.0, **record}
        (folder / ".mindvideo-staging.json").write_text(json.dumps(record))
    return folder


def test_only_staging_folders_of_dead_earlier_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from mindvideo.fsutil import remove_stale_staging

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)
    stale = _staging(tmp_path, ".out.abc123", pid=gone)
    kept = [
        _staging(tmp_path, ".out.user"),  # no marker: a user's folder
        _staging(tmp_path, ".out.alive", pid=os.getppid()),  # its process still runs
        _staging(tmp_path, ".out.other-host", pid=gone, host="elsewhere"),  # cannot tell: kept
        _staging(tmp_path, ".out.new", pid=gone, created=1e12),  # created after this process started
        _staging(tmp_path, ".other.abc", pid=gone),  # the staging folder of another output
    ]
    (tmp_path / ".out.link").symlink_to(stale, target_is_directory=True)
    assert remove_stale_staging(tmp_path / "out") == [stale]
    assert not stale.exists() and all(k.is_dir() for k in kept) and (tmp_path / ".out.link").is_symlink()


def test_sigterm_removes_the_staging_folder_and_exits_143(tmp_path):
    import signal
    import subprocess
    import sys

    script = "import sys, time\nfrom mindvideo.fsutil import atomic_folder\n"
    script += "with atomic_folder(sys.argv[1], 'eval') as tmp:\n    (tmp / 'x').write_text('1')\n"
    script += "    print(tmp, flush=True)\n    time.sleep(60)\n"
    command = [sys.executable, "-c", script, str(tmp_path / "out")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = Path(child.stdout.readline().strip())
    assert staging.is_dir() and (staging / ".mindvideo-staging.json").is_file()
    os.kill(child.pid, signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143 and f"terminated: removing the unfinished {staging}" in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_a_finished_output_holds_no_staging_marker(tmp_path):
    with atomic_folder(tmp_path / "out", "eval") as tmp:
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "a.txt"]
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only while a staging folder does


@pytest.mark.parametrize("mask", [0o022, 0o007])
@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".npy"])
def test_generate_outputs_follow_the_umask(tiny_ckpt, fmri_file, tmp_path, mask, suffix):
    os.umask(mask)
    out = tmp_path / f"clip{suffix}"
    args = ["generate", "--checkpoint", tiny_ckpt, "--fmri", fmri_file, "--frames", "2", "--steps", "1", "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != fmri_file.name)
    clips = [out.name] if suffix == ".npy" else [f"clip_000{suffix}", f"clip_001{suffix}"]  # .npy: one array
    assert written == sorted([*clips, f"clip{suffix}.json"])
    for name in written:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
