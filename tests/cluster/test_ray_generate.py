"""``mindvideo generate --data PREPARED --ray``: a real local Ray cluster (two 1-CPU workers; every socket of its
processes listens on 127.0.0.1 only) on the demo model gives the single-process output bit for bit, reuses finished
shards, survives a killed worker; bad addresses and option mixes are one line, exit 2, nothing written; without
``--ray`` Ray is never imported.

The single-process reference runs in a fresh interpreter with one torch thread, as each worker does (CPU sums depend
on the thread count).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.demo import default_assets

CHECKPOINT = default_assets() / "checkpoint"
FAST = ["--steps", "2", "--guidance", "3", "--frames", "2"]
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
WINDOWS = 8


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Path:
    """The demo's first test windows as a prepared split (stimulus cut to 2 frames, so --eval runs at --frames 2)."""
    test = np.load(default_assets() / "test_set.npz")
    folder = tmp_path_factory.mktemp("ray") / "prep"
    (folder / "test").mkdir(parents=True)
    np.save(folder / "test" / "fmri.npy", test["fmri"][:WINDOWS])
    np.save(folder / "test" / "video.npy", np.ascontiguousarray(test["video"][:WINDOWS, :2]))
    return folder


def args(prep: Path, out: Path, *extra) -> list[str]:
    base = ["generate", "--checkpoint", str(CHECKPOINT), "--data", str(prep), *FAST, "--out", str(out)]
    return [*base, *map(str, extra)]


def single_process(prep: Path, runs: list[tuple[Path, list]]) -> subprocess.Popen:
    """The reference, started: the same commands without --ray, in a fresh interpreter on one torch thread (as a
    worker has)."""
    code = "from mindvideo.cli import main\n" + "".join(
        f"main({args(prep, out, *extra)!r}, standalone_mode=False)\n" for out, extra in runs
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def on_ray(prep: Path, out: Path, *extra) -> subprocess.Popen:
    """The command with --ray (a fresh local cluster, two workers), started in a child process."""
    command = [sys.executable, "-m", "mindvideo", *args(prep, out, "--ray", "--ray-workers", 2, *extra)]
    return subprocess.Popen(command, env={**os.environ, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> str:
    """Wait for a child started above; its stdout (its stderr's end if it failed)."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return stdout.decode()


def process_tree(root: int) -> set[int]:
    """``root`` and its descendants (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
        except (ValueError, OSError):
            continue
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return tree


def listening_addresses(root: int) -> set[str]:
    """The IP addresses the TCP sockets of ``root``'s process tree listen on (/proc/net/tcp{,6}, state 0A)."""
    inodes = set()
    for pid in process_tree(root):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                found.add(socket.inet_ntop(family, raw))
    return found


def shard_records(work: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(work.glob("*/shard-*.json"))}


def mtimes(work: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(work.glob("*/shard-*.npy"))}


def metrics(report: Path) -> dict:
    data = json.loads((report / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in ("settings", "created", "seconds")}


@pytest.mark.ray
def test_two_workers_equal_one_process_and_a_rerun_reuses_finished_shards(prep, tmp_path):
    """A sweep over two seeds as one job, scored: each setting's output and report equal the single-process run's;
    run again after losing one shard and damaging another, only those two are computed."""
    runs = [(tmp_path / f"ref{seed}.npy", ["--seed", seed, "--batch-size", 4, "--eval", tmp_path / f"ref{seed}"])
            for seed in (1, 2)]  # fmt: skip
    reference = single_process(prep, runs)  # alongside the Ray job
    out, report, work = tmp_path / "recon.npy", tmp_path / "report", tmp_path / "recon.npy.shards"
    job = on_ray(prep, out, "--sweep", "seed=1,2", "--batch-size", 4, "--eval", report)
    deadline = time.monotonic() + 180
    while not shard_records(work) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    listening = listening_addresses(job.pid)  # the driver, GCS, raylet, agents and workers, while they run
    stdout = finish(job)
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    finish(reference)
    refs = {seed: np.load(path) for seed, (path, _) in zip((1, 2), runs)}
    for seed in (1, 2):
        np.testing.assert_array_equal(np.load(tmp_path / f"recon.seed{seed}.npy"), refs[seed])  # bit for bit
        assert metrics(report / f"seed{seed}") == metrics(tmp_path / f"ref{seed}")
        record = json.loads((tmp_path / f"recon.seed{seed}.npy.json").read_text())
        assert record["ray"]["shards"] == 2 and record["ray"]["workers"] == 2 and record["settings"]["seed"] == seed
    assert "seed1" in stdout and "SSIM" in stdout
    records = shard_records(work)
    assert len(records) == 4 and len({r["pid"] for r in records.values()}) == 2  # both workers took shards
    before = mtimes(work)
    lost, damaged = sorted(before)[1], sorted(before)[2]
    lost.unlink()
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    finish(on_ray(prep, out, "--sweep", "seed=1,2", "--batch-size", 4, "--eval", tmp_path / "report2"))
    after = mtimes(work)
    assert {p for p in before if after[p] != before[p]} == {lost, damaged}  # only those two were computed
    for seed in (1, 2):
        np.testing.assert_array_equal(np.load(tmp_path / f"recon.seed{seed}.npy"), refs[seed])
    assert json.loads((tmp_path / "recon.seed1.npy.json").read_text())["ray"]["shards_reused_in_job"] == 2


@pytest.mark.ray
def test_a_killed_worker_loses_nothing(prep, tmp_path):
    """SIGKILL to a worker mid-job: Ray restarts it and retries its shard; the job completes with the single-process
    output, and no shard finished before the kill is computed again."""
    reference = single_process(prep, [(tmp_path / "ref.npy", ["--batch-size", 1])])  # alongside the Ray job
    out, work = tmp_path / "recon.npy", tmp_path / "recon.npy.shards"
    process = on_ray(prep, out, "--batch-size", 1)
    deadline = time.monotonic() + 180
    while not (records := shard_records(work)) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert records, process.communicate()[1].decode()[-3000:]
    victim = next(iter(records.values()))["pid"]
    os.kill(victim, signal.SIGKILL)
    finished = {p: (r, p.with_suffix(".npy").stat().st_mtime_ns) for p, r in shard_records(work).items()}
    finish(process)
    assert len(finished) < WINDOWS  # the kill came mid-job
    finish(reference)
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "ref.npy"))
    after = shard_records(work)
    assert len(after) == WINDOWS
    for path, (record, mtime) in finished.items():  # nothing that was finished was computed again
        assert after[path] == record and path.with_suffix(".npy").stat().st_mtime_ns == mtime
    assert victim not in {r["pid"] for p, r in after.items() if p not in finished}  # the rest ran elsewhere


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ray", f"127.0.0.1:{free_port()}"], "expected a Ray cluster answering at 127.0.0.1:"),
        (["--ray", "nowhere"], "expected --ray ADDRESS as HOST:PORT"),
        (["--ray", "--sweep", "guidance"], "expected --sweep KEY=V1,V2,... with KEY one of guidance, steps, seed"),
        (["--ray", "--sweep", "seed=1,x"], "expected numbers in --sweep seed="),
        (["--sweep", "seed=1,2"], "expected --ray with --sweep"),
        (["--ray-workers", "2"], "expected --ray with --ray-workers"),
    ],
)
def test_bad_ray_input_is_one_line_exit_2_and_nothing_written(prep, tmp_path, extra, message):
    out = tmp_path / "out" / "recon.npy"
    result = CliRunner().invoke(main, args(prep, out, *extra))
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.startswith("error:") and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_ray_needs_data(tmp_path):
    fmri = tmp_path / "fmri.npy"
    np.save(fmri, np.zeros((1, 2, 176), np.float32))
    out = tmp_path / "out" / "recon.npy"
    cmd = ["generate", "--checkpoint", str(CHECKPOINT), "--fmri", str(fmri), "--out", str(out), "--ray"]
    result = CliRunner().invoke(main, cmd)
    assert result.exit_code == 2 and "expected --data with --ray" in result.output
    assert not (tmp_path / "out").exists()


def test_without_ray_nothing_of_ray_is_imported(prep, tmp_path):
    """generate --data in a fresh interpreter: no module of the ray package is loaded."""
    code = (
        "import sys; from mindvideo.cli import main\n"
        f"main({args(prep, tmp_path / 'recon.npy', '--max-clips', 2)!r}, standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]" and (tmp_path / "recon.npy").is_file()
