"""Faults during a stream cost one TR, never the session: every TR is checked before it touches any state (shape,
type, finite, plausible against the recent TRs); a bad one is reported and held / skipped / stops the scan as asked;
a fatal condition, SIGTERM or SIGHUP keep every clip made so far in a valid file; no temporary file is left."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from test_engine_stream_support import CHEAP, CHEAP_ARGS, connect, free_port, pipeline, stream_assets

from mindvideo.cli import main
from mindvideo.engine.sinks import FileSink
from mindvideo.engine.sources import Arrival, encode_frame
from mindvideo.engine.stream import (
    FrameGuard,
    GuardBounds,
    OnlineCleaner,
    StreamingDecoder,
    StreamStopped,
    pipeline_generator,
    run_stream,
)
from mindvideo.errors import MindVideoError

BAD = 30  # the garbage TR's index in the scans below


@pytest.fixture(scope="module")
def setup():
    pipe = pipeline()
    return pipe, pipe.transform, pipe.transform.load_run(stream_assets().nifti_run)


def _garbage(kind: str, frame: np.ndarray, seed: int = 0) -> np.ndarray:
    """One TR's raw vector damaged the way a broken sender or file damages it."""
    rng = np.random.default_rng(seed)
    raw = np.ascontiguousarray(frame, "<f4").tobytes()
    if kind == "byteswap":
        return np.frombuffer(raw, ">f4").astype(np.float32)
    if kind == "random-bytes":  # 64 random bytes inside the data block: 16 voxels
        damaged = bytearray(raw)
        damaged[40:104] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        return np.frombuffer(bytes(damaged), "<f4").copy()
    if kind == "ascii":  # a text payload framed with the right length
        text = (b"GET / HTTP/1.1 Host: 127.0.0.1 scanner says hello " * 200)[: len(raw)]
        return np.frombuffer(text, "<f4").copy()
    if kind == "zeros":
        return np.zeros_like(frame)
    if kind == "nan":
        out = frame.copy()
        out[::7] = np.nan
        return out
    raise ValueError(kind)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --------------------------------------------------------------------------------------------------- the guard


def test_clean_runs_pass_and_every_kind_of_garbage_is_caught(setup):
    _, _, run = setup
    guard = FrameGuard()
    assert [guard.check(frame) for frame in run] == [None] * len(run)  # every clean TR of the scan passes
    for kind, reason in [
        ("byteswap", "non-finite|implausible"),
        ("random-bytes", "implausible: .* voxels beyond 30 robust SDs"),
        ("ascii", "implausible: median"),
        ("zeros", "implausible"),
        ("nan", "non-finite values"),
    ]:
        found = guard.check(_garbage(kind, run[BAD]))
        assert found is not None and re.search(reason, found), (kind, found)
    assert guard.check(run[BAD]) is None  # the garbage did not enter the history


def test_the_guard_needs_a_baseline_and_starts_a_new_one_after_a_lasting_change(setup):
    _, _, run = setup
    guard = FrameGuard(GuardBounds(bootstrap=3, rebaseline=4))
    assert guard.check(run[0] * 1000) is None  # nothing to compare with yet: only shape, type and finite
    for frame in run[1:4]:
        assert guard.check(frame) is None
    shifted = run[10:14] * 3.0  # the signal itself changed (a rescaled export, say)
    reasons = [guard.check(frame) for frame in shifted]
    assert all(reasons) and "new baseline" in reasons[-1] and "new baseline" not in reasons[0]
    assert [guard.check(frame) for frame in run[14:20] * 3.0] == [None] * 6


def test_the_cleaner_no_longer_zeroes_nan(setup):
    _, transform, run = setup
    cleaner = OnlineCleaner(transform.n_raw)
    frame = run[0].copy()
    frame[3] = np.nan
    with pytest.raises(MindVideoError, match="1 NaN/inf values"):
        cleaner.update(frame)
    assert cleaner.count == 0


# --------------------------------------------------------------------------------------------------- the decoder


class _Observed:
    """The real pipeline generator, keeping the window each clip was made from (the model's input)."""

    def __init__(self, pipe):
        self.inner, self.windows = pipeline_generator(pipe, CHEAP), []

    def __call__(self, windows: np.ndarray, **settings) -> np.ndarray:
        self.windows.append(windows[0].copy())
        return self.inner(windows, **settings)


def _decode(pipe, transform, frames: list, on_bad_tr: str = "hold", faults: dict | None = None):
    generate = _Observed(pipe)
    decoder = StreamingDecoder(generate, transform, policy="block", on_bad_tr=on_bad_tr, frames=2, steps=1)
    decoder.start()
    for index, frame in enumerate(frames):
        decoder.submit(frame, fault=(faults or {}).get(index), tr=index + 100)
    stats = decoder.close(timeout=120)
    clips = {clip.tr: clip for clip in decoder.clips}
    stats["windows_seen"] = dict(zip(sorted(clips), generate.windows))  # block: generated in TR order
    return clips, stats


@pytest.mark.parametrize("kind", ["ascii", "random-bytes"])
def test_one_garbage_tr_is_held_and_the_later_clips_equal_the_clean_run(setup, kind, caplog):
    pipe, transform, run = setup
    trs = 44
    clean, clean_stats = _decode(pipe, transform, list(run[:trs]))
    damaged = [*run[:BAD], _garbage(kind, run[BAD]), *run[BAD + 1 : trs]]
    clips, stats = _decode(pipe, transform, damaged)
    assert stats["processed"] == stats["windows"] == trs - transform.preprocess.lag  # a clip for every window
    assert stats["bad"] == 1 and stats["bad_trs"][0]["index"] == BAD and stats["bad_trs"][0]["tr"] == BAD + 100
    assert stats["bad_trs"][0]["action"] == "hold" and "implausible" in stats["bad_trs"][0]["reason"]
    assert caplog.text.count(f"bad TR {BAD} (scanner TR {BAD + 100})") == 1  # logged once
    holding = [t for t, clip in clips.items() if clip.held]
    assert holding and all(clips[t].held == (BAD,) for t in holding)
    later = [t for t in clips if t > max(holding)]
    assert len(later) >= 5
    # the garbage never reached the cleaner: later windows (the model's input) and clips are the clean run's
    assert min(_corr(stats["windows_seen"][t], clean_stats["windows_seen"][t]) for t in later) >= 0.99
    assert min(_corr(clips[t].frames, clean[t].frames) for t in later) >= 0.99


def test_skip_decodes_no_window_holding_a_bad_tr_and_fault_arrivals_count_the_same(setup):
    pipe, transform, run = setup
    frames = list(run[:20])
    frames[8] = None  # a source fault: no payload
    clips, stats = _decode(pipe, transform, frames, on_bad_tr="skip", faults={8: "missing: no file for TR 108"})
    assert stats["bad_trs"] == [{"index": 8, "tr": 108, "reason": "missing: no file for TR 108", "action": "skip"}]
    assert stats["skipped"] >= 1 and not set(stats["skipped_trs"]) & set(clips)
    windows = 20 - transform.preprocess.lag
    assert stats["processed"] + stats["skipped"] + stats["dropped"] == stats["windows"] == windows
    assert not any(clip.held for clip in clips.values())


def test_stop_ends_the_scan_and_keeps_every_clip_made(setup, tmp_path):
    pipe, transform, run = setup
    out = tmp_path / "live.mp4"
    decoder = StreamingDecoder(pipeline_generator(pipe, CHEAP), transform, policy="block", on_bad_tr="stop")
    scan = [Arrival(t, run[t], time.monotonic(), f"#{t}", t) for t in range(12)]
    scan[9] = Arrival(9, _garbage("zeros", run[9]), time.monotonic(), "#9", 9)
    with pytest.raises(StreamStopped, match="good TR at TR 9") as stopped:
        run_stream(decoder, scan, [FileSink(out, fps=1.0, frames_per_tr=2)])
    summary = stopped.value.summary
    assert summary["ended"] == "error" and summary["bad"] == 1 and summary["bad_trs"][0]["action"] == "stop"
    assert summary["processed"] == 9 - transform.preprocess.lag and _frames(out) == summary["processed"] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


class _Recorder:
    """A sink keeping what it is given (a real consumer of the protocol)."""

    def __init__(self, fail_write_at: int | None = None, fail_event: bool = False):
        self.clips, self.events, self.summary = [], [], None
        self.fail_write_at, self.fail_event = fail_write_at, fail_event
        self.aborted = False

    def write(self, clip) -> None:
        if clip.tr == self.fail_write_at:
            raise OSError("consumer went away")
        self.clips.append(clip.tr)

    def event(self, record: dict) -> None:
        self.events.append(record)
        if self.fail_event:
            raise RuntimeError("a broken hook")

    def close(self, summary: dict) -> None:
        self.summary = summary

    def abort(self) -> None:
        self.aborted = True


class _FailingSource:
    """Good TRs, then a source error in the middle of the scan; reports its events."""

    def __init__(self, run: np.ndarray, good: int):
        self.run, self.good, self.events = run, good, {"disconnects": 1}

    def __iter__(self):
        for t in range(self.good):
            yield Arrival(t, self.run[t], time.monotonic(), f"#{t}")
        raise MindVideoError("expected the sender back within 1 s", "no reconnection")


def test_a_source_error_mid_scan_keeps_the_output_and_events_reach_the_sinks(setup, tmp_path):
    pipe, transform, run = setup
    out = tmp_path / "live.mp4"
    decoder = StreamingDecoder(pipeline_generator(pipe, CHEAP), transform, policy="block")
    broken, healthy = _Recorder(fail_write_at=3, fail_event=True), _Recorder()
    source = _FailingSource(run, 10)
    source.run = run.copy()
    source.run[6] = _garbage("ascii", run[6])
    with pytest.raises(StreamStopped, match="sender back") as stopped:
        run_stream(decoder, source, [broken, FileSink(out, fps=1.0), healthy])
    summary = stopped.value.summary
    assert summary["source"] == {"disconnects": 1} and summary["processed"] == 10 - transform.preprocess.lag
    assert summary["failed_sinks"] == ["_Recorder: consumer went away"] and broken.aborted
    assert healthy.clips == list(range(summary["processed"])) and healthy.summary["bad"] == 1
    assert [e["type"] for e in healthy.events] == ["bad_tr"] and healthy.events[0]["index"] == 6
    assert _frames(out) == summary["processed"] * 2 and [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


# --------------------------------------------------------------------------------------------------- the CLI


def _start_cli(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    code = "import sys; from mindvideo.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "stream", "--checkpoint", str(stream_assets().ckpt), *CHEAP_ARGS]
    cmd += ["--source", f"tcp:127.0.0.1:{port}", "--sink", f"file:{tmp_path / 'out' / 'live.mp4'}"]
    cmd += ["--stats-json", str(tmp_path / "out" / "stats.json"), "--threads", "1", "--policy", "block", *extra]
    old = os.umask(0o022)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_finish_like_ctrl_c(setup, tmp_path, name):
    _, _, run = setup
    port = free_port()
    proc = _start_cli(tmp_path, port, "--connect-timeout", "60")
    try:
        with connect(port, timeout_s=120) as sock:
            for t in range(12):
                sock.sendall(encode_frame(_garbage("ascii", run[t]) if t == 7 else run[t]))
            time.sleep(1.0)
            proc.send_signal(getattr(signal, name))  # mid-scan: the sender is still connected
            _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = tmp_path / "out"
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "stats.json").read_text())["summary"]
    assert summary["ended"] == name and summary["trs_in"] == 12 and summary["processed"] == summary["windows"]
    assert summary["bad"] == 1 and summary["bad_trs"][0]["index"] == 7
    assert _frames(out / "live.mp4") == summary["processed"] * 2
    assert sorted(p.name for p in out.iterdir()) == ["live.mp4", "stats.json"]  # no hidden temporary file
    assert all((out / n).stat().st_mode & 0o777 == 0o644 for n in ("live.mp4", "stats.json"))  # umask 022


def test_on_bad_tr_stop_exits_3_with_every_clip_written(setup, tmp_path):
    _, _, run = setup
    frames = [run[t] for t in range(10)]
    frames[6] = _garbage("nan", run[6])
    out, stats_json = tmp_path / "out" / "live.mp4", tmp_path / "out" / "stats.json"
    base = ["stream", "--checkpoint", str(stream_assets().ckpt), *CHEAP_ARGS, "--threads", "1", "--policy", "block"]
    args = [
        *base,
        "--source",
        "stdin",
        "--sink",
        f"file:{out}",
        "--stats-json",
        str(stats_json),
        "--on-bad-tr",
        "stop",
    ]
    result = CliRunner().invoke(main, args, input=b"".join(encode_frame(f) for f in frames))
    assert result.exit_code == 3, result.output
    assert result.stderr.count("error: ") == 1 and "good TR at TR 6" in result.stderr and "non-finite" in result.stderr
    summary = json.loads(stats_json.read_text())["summary"]
    assert summary["ended"] == "error" and summary["bad_trs"][0]["action"] == "stop" and summary["trs_in"] == 6
    assert _frames(out) == summary["processed"] * 2 > 0 and sorted(p.name for p in out.parent.iterdir()) == [
        "live.mp4",
        "stats.json",
    ]


def test_a_source_fault_is_reported_once(setup, tmp_path, caplog):
    _, _, run = setup
    cut = encode_frame(run[6])[:-100]  # the last frame cut short: a fault of the stdin source, then the end
    out = tmp_path / "live.mp4"
    base = ["stream", "--checkpoint", str(stream_assets().ckpt), *CHEAP_ARGS, "--threads", "1", "--policy", "block"]
    args = [*base, "--source", "stdin", "--sink", f"file:{out}"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, args, input=b"".join(encode_frame(run[t]) for t in range(6)) + cut)
    assert result.exit_code == 0, result.output
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "truncated" in r.getMessage()]
    assert len(lines) == 1 and "holding the last good TR" in lines[0], lines


def test_sigterm_before_any_tr_writes_nothing(tmp_path):
    port = free_port()
    proc = _start_cli(tmp_path, port, "--connect-timeout", "60")
    try:
        for line in proc.stderr:
            if line.startswith("ready:"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # the scan has started: the source waits for its sender
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "expected at least one decoded TR" in stderr, stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
