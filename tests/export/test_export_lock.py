"""One export writes a folder at a time (a lock file beside it), and ``--force`` rebuilds an export folder whose
manifest.json is gone: every refusal is one line, exit code 2, the folder unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from export_helpers import run_cli
from test_export_errors import assert_user_error

from mindvideo.errors import MindVideoError
from mindvideo.export import load_export
from mindvideo.fsutil import folder_lock


@contextmanager
def lock_held_elsewhere(out: Path, kill: bool = False):
    """Another process holding the export lock of ``out`` for the block; it then releases it (or is killed)."""
    script = "import sys\nfrom mindvideo.fsutil import folder_lock\n"
    script += "with folder_lock(sys.argv[1], 'export'):\n    print('locked', flush=True)\n    sys.stdin.readline()\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        if kill:
            holder.kill()
        holder.stdin.close()
        assert holder.wait(timeout=60) == (-9 if kill else 0)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("force", [False, True])
def test_a_second_export_into_a_locked_folder_is_refused_in_one_line(export_ckpt, exported_copy, force):
    before = _snapshot(exported_copy)
    with lock_held_elsewhere(exported_copy) as pid:
        args = ["export", "--checkpoint", export_ckpt, "--out", exported_copy, *(["--force"] if force else [])]
        result = run_cli(*args)
    assert_user_error(result, "expected no other `mindvideo export` writing", f"pid {pid}", "choose another --out")
    assert _snapshot(exported_copy) == before
    assert not list(exported_copy.parent.glob(".out.*"))  # no staging folder, and the holder's lock file is gone


def test_a_locked_new_folder_is_not_created(export_ckpt, tmp_path):
    out = tmp_path / "new"
    with lock_held_elsewhere(out):
        result = run_cli("export", "--checkpoint", export_ckpt, "--out", out)
    assert_user_error(result, "expected no other `mindvideo export` writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_lock_is_released_and_removed_and_nests_in_one_process(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, "export") as lock, folder_lock(out, "export"):
        record = json.loads(lock.read_text())
        assert record["pid"] == os.getpid() and record["command"] == "export"
    assert not lock.exists()
    with folder_lock(out, "export"):  # free again
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    with lock_held_elsewhere(out, kill=True):
        refused = pytest.raises(MindVideoError, match="expected no other")
        with refused, folder_lock(out, "export"):
            pass
    assert (tmp_path / ".out.lock").is_file()  # a killed holder leaves its file, but the kernel freed the lock
    with folder_lock(out, "export"):
        pass
    assert not (tmp_path / ".out.lock").exists()


def test_force_rebuilds_an_export_whose_manifest_is_gone(export_ckpt, exported_copy):
    (exported_copy / "manifest.json").unlink()
    (exported_copy / "onnx" / "old_network.onnx").write_bytes(b"left over")
    before = _snapshot(exported_copy)
    refused = run_cli("export", "--checkpoint", export_ckpt, "--out", exported_copy)
    assert_user_error(refused, "expected manifest.json in the export folder", "pass --force to rebuild it")
    assert _snapshot(exported_copy) == before
    rebuilt = run_cli("export", "--checkpoint", export_ckpt, "--out", exported_copy, "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    exported = load_export(exported_copy)  # every listed file present and matching its sha256
    assert sorted(p.name for p in (exported_copy / "onnx").iterdir()) == sorted(
        Path(e["files"][0]["path"]).name for e in exported.manifest["networks"].values()
    )
