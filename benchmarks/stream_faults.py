"""Fault injection against ``mindvideo stream``: one bad TR costs one TR, never the session.

Each case replays a short simulated scan (the stream soak's simulation on the demo model's grid) through the real
CLI in a subprocess (demo model, ``--frames 2 --steps 4``, one torch thread, ``--policy block``, sink: one ``.mp4``
plus ``--stats-json``) with one fault injected: a truncated frame then a disconnect (TCP, then the scanner
reconnects; stdin), 64 random bytes and a 0xFFFFFFFF length in the framing, a frame of 400 voxels instead of 432, a
zero-byte file, a file with a zeroed header, a file whose writer pauses 3 s between chunks (``--settle 2``), a framed
ASCII payload, 64 random bytes in a file's data block, a byte-swapped float32 TR, a TR with NaNs, out-of-order files
(``vol_7`` before ``vol_6``) and files created in groups of 3, SIGTERM and SIGHUP mid-scan. Clean runs (TCP,
folder; running and fixed cleaning) are the references, and a held reference: the clean scan with the bad TR
replaced by the TR before it, which is what ``--on-bad-tr hold`` substitutes.

Checks per case (exit code 1 if one fails): the session survives (exit 0); the video is valid and holds a clip for
every window of the timeline (N TRs give N - lag clips, 2 frames each; a bad TR's windows hold the last good TR); the
summary lists exactly the injected bad TRs, each with a reason; no hidden temporary file is left; for the finite
garbage cases (ASCII, random bytes, byte swap, NaN) under fixed cleaning every clip after the bad TR's windows
correlates ≥ 0.99 with the clean run's (decoded video frames); under running cleaning, with the held reference's
(against the clean run it is recorded, not checked: the clean run's cleaner saw the real TR, information the faulty run
never had, and its running estimates carry that difference for their half-lives); for SIGTERM / SIGHUP: exit 0,
``ended`` names the signal, every window received is decoded, a playable video. Writes
``benchmarks/results/stream_faults-demo.json`` (device, commit, command, date).

Example::

    python benchmarks/stream_faults.py                 # every case, 48 TRs each (about 5 minutes on 2 cores)
    python benchmarks/stream_faults.py --cases ascii-payload-tcp-running-cleaning sigterm-tcp
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.benchmarks.provenance import cpu_name, provenance
from mindvideo.benchmarks.stream_soak import CLI, Scan, make_scan, model_checkpoint, shown_command
from mindvideo.data import FMRITransform
from mindvideo.engine.sources import encode_frame
from mindvideo.engine.stream import calibration_stats

BAD = 10  # the timeline index of the injected fault
FRAMES = 2


# --------------------------------------------------------------------------------------------------- producers


@dataclasses.dataclass
class Ctx:
    """What a producer needs: the scan, where to send it, the stream process."""

    scan: Scan
    target: Any  # TCP port, folder, or the process's stdin
    proc: subprocess.Popen
    cadence: float = 0.05

    @property
    def trs(self) -> int:
        return len(self.scan.vectors)


def _garbage(kind: str, vector: np.ndarray) -> bytes:
    """The raw float32 payload of one TR as a broken sender would send it."""
    raw = np.ascontiguousarray(vector, "<f4").tobytes()
    if kind == "ascii":
        return (b"GET / HTTP/1.1 Host: 127.0.0.1 scanner says hello " * 64)[: len(raw)]
    if kind == "byteswap":
        return np.ascontiguousarray(vector, ">f4").tobytes()
    if kind == "nan":
        values = vector.astype("<f4")
        values[::9] = np.nan
        return values.tobytes()
    if kind == "400-voxels":
        return raw[: 400 * 4]
    raise ValueError(kind)


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 120
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_closed(sock: socket.socket) -> None:
    """Until the stream drops this connection (it does after framing garbage)."""
    sock.settimeout(30)
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    sock.close()


def tcp_producer(fault: str | None = None, stop: str | None = None) -> Callable[[Ctx], None]:
    """TRs over TCP at the cadence; TR ``BAD`` replaced by ``fault``; ``stop``: a signal sent after TR ``BAD``."""

    def produce(ctx: Ctx) -> None:
        sock = _connect(ctx.target)
        for t in range(ctx.trs):
            time.sleep(ctx.cadence)
            if t == BAD and stop is not None:
                time.sleep(1.0)
                ctx.proc.send_signal(getattr(signal, stop))
                break
            if t != BAD or fault is None:
                sock.sendall(encode_frame(ctx.scan.vectors[t]))
            elif fault in ("truncated", "random-bytes", "length-ffffffff"):
                if fault == "truncated":  # a frame cut short, then the connection drops
                    payload = _garbage("ascii", ctx.scan.vectors[t])
                    sock.sendall(struct.pack(">I", len(payload)) + payload[:400])
                    sock.close()
                else:  # garbage where a length should be: the stream drops the connection to resynchronise
                    rng = np.random.default_rng(7)
                    junk = bytes([0xA7]) + rng.integers(0, 256, 63, dtype=np.uint8).tobytes()
                    sock.sendall(junk if fault == "random-bytes" else b"\xff\xff\xff\xff")
                    _wait_closed(sock)
                sock = _connect(ctx.target)  # the scanner comes back
            elif fault == "repeat-previous":  # what --on-bad-tr hold puts in the bad TR's place
                sock.sendall(encode_frame(ctx.scan.vectors[t - 1]))
            else:
                payload = _garbage(fault, ctx.scan.vectors[t])
                sock.sendall(struct.pack(">I", len(payload)) + payload)
        if stop is None:
            sock.sendall(encode_frame(None))
        time.sleep(0.5)
        sock.close()

    return produce


def stdin_truncated(ctx: Ctx) -> None:
    """TRs on stdin, the last one cut short, then the end of the stream."""
    for t in range(ctx.trs - 1):
        ctx.target.write(encode_frame(ctx.scan.vectors[t]))
    ctx.target.write(encode_frame(ctx.scan.vectors[-1])[:-1000])
    ctx.target.close()


def finite_junk(size: int) -> bytes:
    """Random bytes that read as finite float32 values (a NaN among them would be caught as non-finite; these must
    be caught as implausible)."""
    for seed in range(7, 1000):
        junk = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
        if np.isfinite(np.frombuffer(junk, "<f4")).all():
            return junk
    raise RuntimeError("no finite random bytes")


def _cifti_bytes(scan: Scan, t: int, scratch: Path) -> bytes:
    """TR ``t`` as the bytes of a one-row CIFTI file (written by the soak's scanner, read back)."""
    scan.write_tr(scratch, t)
    path = scratch / f"vol_{t:05d}.dtseries.nii"
    data = path.read_bytes()
    path.unlink()
    return data


def folder_producer(fault: str | None = None) -> Callable[[Ctx], None]:
    """Per-TR CIFTI files, each renamed into place at the cadence; TR ``BAD`` written as ``fault`` says."""

    def produce(ctx: Ctx) -> None:
        folder, scratch = ctx.target, ctx.target.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        order = list(range(ctx.trs))
        if fault == "out-of-order":
            order[BAD - 1], order[BAD] = BAD, BAD - 1  # vol_10 is written before vol_9
        for i, t in enumerate(order):
            if fault == "groups-of-3":
                time.sleep(0.03 if i % 3 == 0 else 0.0)
            else:
                time.sleep(ctx.cadence)
            data = _cifti_bytes(ctx.scan, t, scratch)
            name = folder / f"vol_{t:05d}.dtseries.nii"
            if t == BAD and fault == "zero-byte":
                data = b""
            elif t == BAD and fault == "zeroed-header":
                data = bytes(540) + data[540:]
            elif t == BAD and fault == "random-bytes":
                import nibabel as nib

                offset = int(nib.Nifti2Header.from_fileobj(io.BytesIO(data)).get_data_offset())
                data = data[: offset + 40] + finite_junk(64) + data[offset + 104 :]
            elif t == BAD and fault == "slow-writer":  # two chunks, 3 s apart, written in place
                with open(name, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    time.sleep(3.0)
                    handle.write(data[len(data) // 2 :])
                continue
            part = folder / f".{name.name}.part"
            part.write_bytes(data)
            os.replace(part, name)

    return produce


@dataclasses.dataclass
class Case:
    name: str
    item: int  # the item of the fault list this case replays
    source: str  # tcp | stdin | folder
    produce: Callable[[Ctx], None]
    bad: list[int]  # timeline indices that must be reported bad
    reason: str = ""  # a word every bad TR's reason must hold
    compare: bool = False  # later clips against the clean run's (with the same cleaning)
    stop: str | None = None  # a signal sent mid-scan
    extra: tuple[str, ...] = ()
    fixed: bool = False  # fixed cleaning statistics (--clean-stats of the clean scan) instead of running ones
    held: str | None = None  # also against this run: the clean scan with the bad TR replaced by the one before it

    @property
    def reference(self) -> str:
        return f"clean-{'folder' if self.source == 'folder' else 'tcp'}{'-fixed' if self.fixed else ''}"


CASES = [
    Case("clean-tcp", 0, "tcp", tcp_producer(), []),
    Case("clean-folder", 0, "folder", folder_producer(), []),
    Case("clean-tcp-fixed", 0, "tcp", tcp_producer(), [], fixed=True),
    Case("clean-folder-fixed", 0, "folder", folder_producer(), [], fixed=True),
    Case("truncated-then-disconnect-tcp", 1, "tcp", tcp_producer("truncated"), [BAD], "truncated"),
    Case("truncated-stdin", 1, "stdin", stdin_truncated, [-1], "truncated"),
    Case("random-64-bytes-tcp", 1, "tcp", tcp_producer("random-bytes"), [BAD], "framing"),
    Case("400-voxels-tcp", 1, "tcp", tcp_producer("400-voxels"), [BAD], "(432,)"),
    Case("length-ffffffff-tcp", 1, "tcp", tcp_producer("length-ffffffff"), [BAD], "4294967295"),
    Case("zero-byte-file-folder", 1, "folder", folder_producer("zero-byte"), [BAD], "unreadable"),
    Case("zeroed-header-folder", 1, "folder", folder_producer("zeroed-header"), [BAD], "unreadable"),
    Case("slow-writer-folder", 1, "folder", folder_producer("slow-writer"), [], extra=("--settle", "2")),
    Case("sigterm-tcp", 2, "tcp", tcp_producer(stop="SIGTERM"), [], stop="SIGTERM"),
    Case("sighup-tcp", 2, "tcp", tcp_producer(stop="SIGHUP"), [], stop="SIGHUP"),
    Case("ascii-payload-tcp", 3, "tcp", tcp_producer("ascii"), [BAD], "implausible", True, fixed=True),
    Case(
        "random-bytes-in-data-folder",
        3,
        "folder",
        folder_producer("random-bytes"),
        [BAD],
        "implausible",
        True,
        fixed=True,
    ),
    Case("byteswapped-tcp", 3, "tcp", tcp_producer("byteswap"), [BAD], "", True, fixed=True),
    Case("nan-tcp", 3, "tcp", tcp_producer("nan"), [BAD], "non-finite", True, fixed=True),
    Case("held-reference-tcp", 0, "tcp", tcp_producer("repeat-previous"), []),
    Case(
        "ascii-payload-tcp-running-cleaning",
        3,
        "tcp",
        tcp_producer("ascii"),
        [BAD],
        "implausible",
        True,
        held="held-reference-tcp",
    ),
    Case("out-of-order-folder", 4, "folder", folder_producer("out-of-order"), []),
    Case("groups-of-3-folder", 4, "folder", folder_producer("groups-of-3"), []),
]


# --------------------------------------------------------------------------------------------------- one case


def video_frames(path: Path) -> np.ndarray | None:
    import av

    if not path.is_file():
        return None
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run_case(case: Case, ckpt: Path, scan: Scan, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = work / case.name
    out = folder / "out"
    out.mkdir(parents=True)
    stdin = None
    if case.source == "tcp":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            target: Any = probe.getsockname()[1]
        spec = f"tcp:127.0.0.1:{target}"
    elif case.source == "folder":
        target = folder / "export"
        target.mkdir()
        spec = f"folder:{target}"
    else:
        spec, stdin = "stdin", subprocess.PIPE
    cmd = [sys.executable, "-c", CLI, "stream", "--checkpoint", ckpt, "--source", spec]
    cmd += ["--sink", f"file:{out / 'live.mp4'}", "--stats-json", out / "stats.json", "--frames", FRAMES]
    cmd += ["--steps", args.steps, "--threads", 1, "--policy", "block", "--tr", 0.5, "--idle-timeout", 6]
    cmd += ["--connect-timeout", 120, "--reconnect-timeout", 10, "--max-trs", args.trs, *case.extra]
    if case.fixed:
        cmd += ["--clean-stats", work / "calibration.npz"]
    cmd = [str(c) for c in cmd]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    ctx = Ctx(scan, proc.stdin if stdin else target, proc)
    try:
        case.produce(ctx)
        proc.stdout.read()
        rc = proc.wait(timeout=300)
    finally:
        proc.kill()
    reader.join(10)
    stderr = b"".join(errors).decode("utf-8", "replace")
    (folder / "stderr.log").write_text(stderr)
    command = shown_command(cmd[3:], work)
    return measure(case, rc, out, stderr, time.monotonic() - started, command, args.trs)


def measure(case: Case, rc: int, out: Path, stderr: str, wall: float, command: str, scan_trs: int) -> dict[str, Any]:
    """The checks and figures of one case (``scan_trs``: the timeline every case without a signal must keep)."""
    report = json.loads((out / "stats.json").read_text()) if (out / "stats.json").is_file() else {"summary": {}}
    summary = report["summary"]
    lag, trs = summary.get("lag", 0), summary.get("trs_in", 0)
    frames = video_frames(out / "live.mp4")
    bad = summary.get("bad_trs", [])
    expected_bad = [trs - 1 if i < 0 else i for i in case.bad]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    checks = {
        "exit_0": rc == 0,
        "no_temporary_file": not hidden,
        "a_clip_for_every_window": summary.get("processed") == summary.get("windows") == trs - lag > 0,
        "video_holds_every_clip": frames is not None and len(frames) == summary.get("processed", -1) * FRAMES,
        "bad_trs_reported": [b["index"] for b in bad] == expected_bad,
        "every_bad_tr_has_its_reason": all(b["reason"] and case.reason in b["reason"] for b in bad),
    }
    if case.stop is None:
        checks["whole_timeline"] = trs == scan_trs
    else:
        checks["ended_by_the_signal"] = summary.get("ended") == case.stop
    return {
        "case": case.name,
        "item": case.item,
        "source": case.source,
        "exit_code": rc,
        "trs_in": trs,
        "lag": lag,
        "clips": summary.get("processed"),
        "windows": summary.get("windows"),
        "video_frames": None if frames is None else len(frames),
        "bad_trs": bad,
        "ended": summary.get("ended"),
        "source_events": summary.get("source"),
        "error_lines": [line for line in stderr.splitlines() if line.startswith("error:")],
        "wall_s": round(wall, 1),
        "checks": checks,
        "command": command,
        "_frames": frames,
    }


def correlations(result: dict[str, Any], ref: dict[str, Any]) -> list[float]:
    """Per clip after the bad TR's windows: the correlation of its decoded frames with ``ref``'s clip."""
    ours, theirs, lag = result["_frames"], ref["_frames"], result["lag"]
    later = range(BAD - lag + 1, result["clips"] or 0)  # window t holds frames t+lag … t+lag+W-1
    corr = []
    for t in later:
        a = ours[t * FRAMES : (t + 1) * FRAMES].astype(np.float64).ravel()
        b = theirs[t * FRAMES : (t + 1) * FRAMES].astype(np.float64).ravel()
        corr.append(float(np.corrcoef(a, b)[0, 1]))
    return corr


def compare_held(result: dict[str, Any], held: dict[str, Any]) -> None:
    """Every clip after the bad TR's windows against the held reference (the clean scan with the bad TR replaced by
    the one before it, i.e. what ``--on-bad-tr hold`` substitutes): whatever the garbage was, it must leave no trace
    in the cleaner's running statistics or anywhere else, so every later clip must match (r ≥ 0.99)."""
    corr = correlations(result, held)
    result["held_reference"] = {
        "run": held["case"],
        "later_clips": len(corr),
        "later_corr_min": round(min(corr), 5) if corr else None,
        "later_corr_median": round(float(np.median(corr)), 5) if corr else None,
    }
    result["checks"]["later_clips_equal_the_held_reference_run"] = bool(corr) and min(corr) >= 0.99


def compare(result: dict[str, Any], clean: dict[str, Any], fixed: bool) -> None:
    """Every clip after the bad TR's windows against the clean run's (correlation of the decoded frames).

    Fixed cleaning: a held TR changes only the windows holding it, so every later clip must match (r ≥ 0.99).
    Running cleaning: the cleaner never saw the bad TR's values, and the clean run's one sample more stays in its
    running estimates (half-lives 32 / 64 TRs): the later windows differ by a few percent right after it, decaying.
    Recorded (every value), not checked."""
    corr = correlations(result, clean)
    result["later_clips"] = len(corr)
    result["later_corr"] = [round(c, 4) for c in corr]
    result["later_corr_min"] = round(min(corr), 5) if corr else None
    result["later_corr_median"] = round(float(np.median(corr)), 5) if corr else None
    result["later_corr_share_ge_0_99"] = round(float(np.mean(np.array(corr) >= 0.99)), 3) if corr else None
    if fixed:
        result["checks"]["later_clips_equal_the_clean_run"] = bool(corr) and min(corr) >= 0.99


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trs", type=int, default=48, help="TRs per case (the fault is at TR 10)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="[default: all]")
    parser.add_argument("--work", type=Path, help="keep the work files here [default: a temporary folder]")
    parser.add_argument("--out", type=Path, help="result file [default: benchmarks/results/stream_faults-demo.json]")
    return parser.parse_args(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(argv)
    record = {"benchmark": "stream_faults", **provenance(argv)}
    record["device"] = f"{cpu_name()}, {os.cpu_count()} logical CPUs (the decoder runs on the CPU; shared machine)"
    work = args.work or Path(tempfile.mkdtemp(prefix="stream-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [c for c in CASES if args.cases is None or c.name in args.cases]
    references = {w.reference for w in wanted if w.compare} | {w.held for w in wanted if w.held}
    chosen = [c for c in CASES if c in wanted or c.name in references]
    try:
        ckpt, model = model_checkpoint(work, "demo")
        scan = make_scan(work, FMRITransform.load(ckpt / "data_transform"), args.trs, seed=11)
        mean, std = calibration_stats(scan.vectors)
        np.savez(work / "calibration.npz", mean=mean, std=std)
        results = {}
        for case in chosen:
            results[case.name] = result = run_case(case, ckpt, scan, work, args)
            if case.compare:
                compare(result, results[case.reference], case.fixed)
            if case.held:
                compare_held(result, results[case.held])
            result["passed"] = all(result["checks"].values())
            failed = [k for k, ok in result["checks"].items() if not ok]
            print(
                f"{case.name:>30}: {'PASS' if result['passed'] else 'FAIL ' + ', '.join(failed)}  "
                f"rc {result['exit_code']}, {result['clips']}/{result['windows']} clips, bad "
                f"{[(b['index'], b['reason'][:60]) for b in result['bad_trs']]}, {result['wall_s']} s",
                flush=True,
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for result in results.values():
        result.pop("_frames")
    settings = {"frames": FRAMES, "steps": args.steps, "trs": args.trs, "bad_tr": BAD, "policy": "block"}
    record.update(model=model, settings=settings, load_average_after=[round(v, 2) for v in os.getloadavg()])
    record.update(results=list(results.values()), passed=all(r["passed"] for r in results.values()))
    out = args.out or Path(__file__).parent / "results" / "stream_faults-demo.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"{'PASS' if record['passed'] else 'FAIL'}; wrote {out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
