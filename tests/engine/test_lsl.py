"""``mindvideo stream`` with LSL in and out: a 300-TR demo-model stream from an LSL outlet in this test, through the
CLI in a subprocess, to LSL inlets in this test, every TR accounted for; wrong stream type / channel count → one
line, exit 2. Everything runs under the loopback-only liblsl configuration (``mindvideo.engine.lsl``): the test
checks that liblsl loaded it in both processes and that no socket of either process has a peer off this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mindvideo.engine import lsl

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pylsl") is None, reason='needs pip install -e ".[lsl]"')

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "mindvideo" / "assets" / "demo" / "checkpoint"
TRS, CADENCE_S = 300, 0.1
CHEAP = ["--frames", "2", "--steps", "2", "--threads", "1", "--tr", str(CADENCE_S)]


@pytest.fixture(scope="module")
def pylsl(tmp_path_factory):
    """pylsl under a loopback-only configuration written for this module (or the one already loaded)."""
    if lsl.config_path() is None:
        os.environ[lsl.CONFIG_ENV] = str(lsl.write_loopback_config(tmp_path_factory.mktemp("lsl")))
    module = lsl.load_pylsl()
    assert "ResolveScope = machine" in lsl.config_path().read_text()
    return module


def _cli(*args: object) -> subprocess.Popen:
    env = {**os.environ, lsl.CONFIG_ENV: str(lsl.config_path()), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mindvideo", "stream", "--checkpoint", str(DEMO), *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outlet(pylsl, name: str, kind: str, channels: int):
    info = pylsl.StreamInfo(name, kind, channels, 1 / CADENCE_S, pylsl.cf_float32, f"test/{name}")
    return pylsl.StreamOutlet(info)


def _inlet(pylsl, name: str, timeout_s: float = 60.0):
    found = pylsl.resolve_byprop("name", name, minimum=1, timeout=timeout_s)
    assert found, f"no LSL stream {name} within {timeout_s} s"
    inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=False)
    inlet.open_stream(timeout=timeout_s)
    return inlet


def _sockets(pid: int) -> list[tuple[str, str, str]]:
    """(protocol, local, peer) of every inet socket of process ``pid`` (``ss``)."""
    out = subprocess.run(["ss", "-Htuanp"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if f"pid={pid}," in line]
    return [(row[0], row[4], row[5]) for row in rows]


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]").split("%")[0]


def _check_loopback(pid: int) -> list[tuple[str, str, str]]:
    """Every socket of ``pid`` talks to 127.0.0.1 only: peers are 127.0.0.1 (or none: listening / unconnected UDP),
    local addresses are 127.0.0.1 or liblsl's wildcard listeners (0.0.0.0; no configuration option binds them to
    loopback). No IPv6 socket at all."""
    sockets = _sockets(pid)
    for proto, local, peer in sockets:
        assert _host(local) in ("127.0.0.1", "0.0.0.0"), (proto, local, peer)
        assert _host(peer) in ("127.0.0.1", "0.0.0.0", "*"), (proto, local, peer)
    return sockets


class Collector(threading.Thread):
    """Pull every sample of an inlet until a pull comes back empty after ``done()`` (or 150 s pass)."""

    def __init__(self, inlet, done):
        super().__init__(daemon=True)
        self.inlet, self.done, self.samples, self.stamps = inlet, done, [], []

    def run(self) -> None:
        deadline = time.monotonic() + 150.0
        while time.monotonic() < deadline:
            try:
                samples, stamps = self.inlet.pull_chunk(timeout=0.2)
            except Exception:  # the outlet closed (after the end marker)
                return
            self.samples.extend(samples)
            self.stamps.extend(stamps)
            if not samples and self.done():
                return


def _ended(collector: Collector) -> bool:
    return any(json.loads(s[0])["event"] == "end" for s in collector.samples[-3:])


def test_lsl_stream_300_trs(pylsl, tmp_path):
    """300 raw TRs pushed to an LSL outlet at 10 Hz → mindvideo stream (demo model and classifier, block policy) →
    the markers, embedding and scores outlets: a clip marker, an embedding and a score sample for each of the 298
    windows, latencies recorded."""
    tag = uuid.uuid4().hex[:8]
    source, sink, stats = f"fmri-{tag}", f"mv-{tag}", tmp_path / "stats.json"
    outlet = _outlet(pylsl, source, "fMRI", 432)  # the demo transform's raw voxel count
    spec = f"lsl:{sink},classifier={DEMO.parent / 'classifier'}"
    # --idle-timeout: the default (10 TRs = 1 s here) could end the scan while this test is still resolving the
    # sink's three streams, before it sends the first TR; --max-trs ends it
    proc = _cli("--source", f"lsl:{source}", "--sink", spec, *CHEAP, "--policy", "block", "--max-trs", TRS,
                "--connect-timeout", 60, "--idle-timeout", 60, "--stats-json", stats)  # fmt: skip
    try:
        markers = Collector(_inlet(pylsl, f"{sink}-markers"), lambda: _ended(markers))
        embedding = Collector(_inlet(pylsl, f"{sink}-embedding"), lambda: _ended(markers))
        scores = Collector(_inlet(pylsl, f"{sink}-scores"), lambda: _ended(markers))
        for worker in (markers, embedding, scores):
            worker.start()
        assert outlet.wait_for_consumers(60.0), "the stream did not connect to the source outlet"
        rng, sockets = np.random.default_rng(0), {}
        for t in range(TRS):
            outlet.push_sample(rng.standard_normal(432).astype(np.float32), pylsl.local_clock())
            if t == TRS // 2:  # mid-stream: both processes' sockets
                sockets = {"cli": _check_loopback(proc.pid), "test": _check_loopback(os.getpid())}
            time.sleep(CADENCE_S)
        markers.join(150.0)
        embedding.join(30.0)
        scores.join(30.0)
        _, err = proc.communicate(timeout=60.0)
    except AssertionError as exc:  # say why when the stream process is the reason
        if proc.poll() is not None:
            why = f"mindvideo stream exited {proc.returncode}: {proc.stderr.read()[-3000:]}"
            raise AssertionError(f"{exc}; {why}") from exc
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(s[0]) for s in markers.samples]
    clips = [e for e in events if e["event"] == "clip"]
    windows = TRS - 2  # the demo transform's lag is 2 TRs
    accounted = sorted([e["tr"] for e in clips] + [e["index"] for e in events if e["event"] == "dropped"])
    assert accounted == list(range(windows)), accounted[:20]
    latencies = np.array([e["latency_s"] for e in clips])
    assert np.all(np.isfinite(latencies)) and np.all(latencies > 0) and np.all(latencies < 30.0)
    end = events[-1]
    assert end["event"] == "end" and end["trs_in"] == TRS and end["processed"] == windows and end["lost"] == 0, end
    rows = np.array(embedding.samples, np.float32)
    assert rows.shape == (windows, 1 + 16 * 64)  # TR index, then the demo encoder's (16, 64) output
    assert sorted(rows[:, 0].astype(int).tolist()) == list(range(windows))
    assert np.all(np.isfinite(rows)) and np.unique(rows[:, 1:], axis=0).shape[0] == windows
    probs = np.array(scores.samples, np.float64)
    assert probs.shape == (windows, 1 + 10)  # TR index, then the demo classifier's 10 class probabilities
    assert sorted(probs[:, 0].astype(int).tolist()) == list(range(windows))
    assert np.allclose(probs[:, 1:].sum(axis=1), 1.0, atol=1e-4) and np.all(probs[:, 1:] >= 0)
    summary = json.loads(stats.read_text())["summary"]
    assert summary["trs_in"] == TRS and summary["processed"] == windows and summary["dropped"] == 0
    log = (lsl.config_path().parent / "liblsl.log").read_text()
    assert log.count(f"Configuration loaded from {lsl.config_path()}") >= 2  # this process and the CLI
    assert sockets["cli"] and sockets["test"]
    print(f"latency s: p50 {np.median(latencies):.3f}  max {latencies.max():.3f}; sockets {sockets}")


def test_lsl_source_wrong_channel_count(pylsl, tmp_path):
    """A stream with the wrong channel count: one line on stderr (liblsl writes nothing there), exit 2, no output."""
    name, out = f"bad-{uuid.uuid4().hex[:8]}", tmp_path / "out.mp4"
    outlet = _outlet(pylsl, name, "fMRI", 431)
    proc = _cli("--source", f"lsl:{name}", "--sink", f"file:{out}", *CHEAP, "--connect-timeout", 30)
    _, err = proc.communicate(timeout=120.0)
    del outlet
    assert proc.returncode == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "to have 432 channels (the checkpoint's raw voxel count); found 431 channels" in err, err
    assert list(tmp_path.iterdir()) == []


def test_lsl_source_wrong_type(pylsl, tmp_path):
    """A stream that is not of type fMRI (CLI in this process): one error line, exit 2, no output."""
    from click.testing import CliRunner

    from mindvideo.cli import main

    name, out = f"eeg-{uuid.uuid4().hex[:8]}", tmp_path / "out.mp4"
    outlet = _outlet(pylsl, name, "EEG", 432)
    args = ["stream", "--checkpoint", DEMO, "--source", f"lsl:{name}", "--sink", f"file:{out}", *CHEAP]
    result = CliRunner().invoke(main, [*map(str, args), "--connect-timeout", "30"])
    del outlet
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "to be of type fMRI; found type 'EEG'" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_lsl_sink_spec_errors():
    """A bad lsl sink spec is refused before anything loads (and without pylsl)."""
    from mindvideo.engine.sinks import parse_sink
    from mindvideo.errors import MindVideoError

    assert parse_sink("lsl:mv,classifier=some/dir") == ("lsl", "mv,classifier=some/dir")
    for spec in ("lsl:", "lsl:mv,model=x", "lsl:,classifier=x"):
        with pytest.raises(MindVideoError):
            parse_sink(spec)


def test_loopback_config_keys(tmp_path):
    """The generated file holds each key liblsl's api_config reads for its address lists, exactly once."""
    path = lsl.write_loopback_config(tmp_path, session_id="s1")
    text = path.read_text()
    keys = re.findall(r"^(\w+) =", text, flags=re.M)
    assert len(keys) == len(set(keys))
    for key, value in {
        "multicast.ResolveScope": "machine",
        "ports.IPv6": "disable",
        "multicast.MachineAddresses": "{127.0.0.1}",
        "multicast.AddressesOverride": "{127.0.0.1}",
        "multicast.Interfaces": "{127.0.0.1}",
        "multicast.ListenAddress": "127.0.0.1",
        "multicast.TTLOverride": "0",
        "lab.KnownPeers": "{127.0.0.1}",
        "lab.ResolveOverTCP": "0",
        "lab.SessionID": "s1",
        "log.file": str(tmp_path.resolve() / "liblsl.log"),
    }.items():
        assert lsl.config_value(path, key) == value, key


def test_lsl_source_outlet_disappears(pylsl):
    """The sender's outlet goes away (shortly after its last push: an outlet drops what it has not sent yet) and a
    new one with the same name comes back: the source reconnects and its TRs follow; when it stays away
    --reconnect-timeout, the scan ends."""
    from mindvideo.engine.sources import open_source

    name = f"gone-{uuid.uuid4().hex[:8]}"
    held = [_outlet(pylsl, name, "fMRI", 4)]
    source = open_source(f"lsl:{name}", channels=4, connect_timeout_s=10.0, idle_timeout_s=30.0,
                         reconnect_timeout_s=3.0)  # fmt: skip
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(source), daemon=True)
    reader.start()
    for round_ in range(2):
        assert held[0].wait_for_consumers(15.0)
        for k in range(3):
            held[0].push_sample([round_, k, 0, 0], pylsl.local_clock())
        time.sleep(0.3)
        held.pop()  # the outlet goes away
        gone = time.monotonic()
        if round_ == 0:
            time.sleep(1.0)
            held.append(_outlet(pylsl, name, "fMRI", 4))  # the sender restarts
    reader.join(30.0)
    assert not reader.is_alive()
    assert 2.5 < time.monotonic() - gone < 15.0  # it waited --reconnect-timeout for the outlet to come back
    assert [a.payload[:2].tolist() for a in got] == [[r, k] for r in range(2) for k in range(3)]
    assert [a.tr for a in got] == list(range(6)) and all(a.arrival <= time.monotonic() for a in got)
    assert source.events == {"disconnects": 2, "reconnects": 1}


def test_lsl_sink_markers(pylsl):
    """The sink's marker stream: a clip, a dropped window and a bad TR (the decoder's event hook), then the end of
    the scan; each stamped on LSL's clock."""
    from mindvideo.engine.lsl import LslSink
    from mindvideo.engine.stream import Clip

    name = f"mk-{uuid.uuid4().hex[:8]}"
    sink = LslSink(name)
    markers = Collector(_inlet(pylsl, f"{name}-markers", 10.0), lambda: _ended(markers))
    markers.start()
    now = time.monotonic()
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    sink.write(Clip(4, frames, now - 0.5, now - 0.3, now, {"steps": 2}, True, False))
    sink.event({"type": "dropped", "index": 5, "time": now})
    sink.event({"type": "bad_tr", "index": 6, "tr": 6, "reason": "not finite", "action": "hold", "time": now})
    sink.close({"trs_in": 9, "processed": 1, "dropped": 1, "bad": 1})  # returns after LINGER_S
    markers.join(10.0)
    events, stamps = [json.loads(s[0]) for s in markers.samples], markers.stamps
    assert [e["event"] for e in events] == ["clip", "dropped", "bad_tr", "end"], events
    assert events[0]["tr"] == 4 and abs(events[0]["latency_s"] - 0.5) < 1e-6 and events[0]["steps"] == 2
    assert events[1]["index"] == 5 and events[2]["reason"] == "not finite" and events[2]["action"] == "hold"
    assert events[3] == {"event": "end", "trs_in": 9, "processed": 1, "dropped": 1, "bad": 1, "lost": 0}
    clock_now = pylsl.local_clock() - (time.monotonic() - now)  # `now` on LSL's clock
    assert all(abs(stamp - clock_now) < 0.05 for stamp in stamps[:3]), (stamps, clock_now)


def test_no_pylsl_without_lsl():
    """Parsing every other source and sink kind, and importing this module, imports no pylsl."""
    code = (
        "import sys; from mindvideo.engine import lsl, sinks, sources; "
        "sources.parse_source('stdin'); sinks.parse_sink('stdout'); sinks.parse_sink('lsl:x'); "
        "assert 'pylsl' not in sys.modules, 'pylsl imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
