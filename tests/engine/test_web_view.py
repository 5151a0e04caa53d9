"""The live browser view (``--sink web:127.0.0.1:PORT``): real HTTP requests on 127.0.0.1 (several viewers at once,
a slow viewer, the end of the stream), a port in use and a non-local address (one line, exit 2, nothing written), and
a real headless Chromium on the page during a demo-model stream (a frame on screen, counters equal to the summary)."""

from __future__ import annotations

import html
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.demo import default_assets
from mindvideo.engine.sinks import open_sinks, parse_sink
from mindvideo.engine.stream import Clip
from mindvideo.engine.web_view import WebSink, frame_strip, png_bytes
from mindvideo.errors import MindVideoError

CLI = "import sys; from mindvideo.cli import main; sys.exit(main())"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
BACKGROUND = (0x14, 0x16, 0x1A)  # the page's background (engine/web/index.html)
LIVE_BOX = (56, 376, 16, 336)  # the live canvas on the page: top, bottom, left, right (CSS px)
LIVE_GREEN = (0x2F, 0x6F, 0x3E)  # the status badge while the stream runs ("ended": grey)


def _clip(tr: int, frames: int = 2, size: int = 16, seed: int | None = None) -> Clip:
    rng = np.random.default_rng(tr if seed is None else seed)
    now = time.monotonic()
    pixels = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    return Clip(tr=tr, frames=pixels, arrival=now - 0.25, started=now - 0.2, ready=now, settings={}, warm=True,
                degraded=False)  # fmt: skip


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _state(sink: WebSink, after: int = 0, events: int = 0, viewer: str = "t", wait: float = 0) -> dict:
    return json.loads(_get(f"{sink.url}state?after={after}&events={events}&viewer={viewer}&wait={wait}"))


def _decode_png(data: bytes) -> np.ndarray:
    with av.open(__import__("io").BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture
def sink():
    view = WebSink(0, fps=4.0, linger_s=3.0)
    yield view
    view.abort()


# --------------------------------------------------------------------------------------------------- server


def test_png_strip_decodes_to_the_frames():
    frames = _clip(0, frames=3, size=9).frames  # odd sizes: no padding anywhere
    decoded = _decode_png(png_bytes(frame_strip(frames)))
    assert decoded.shape == (9, 27, 3)
    np.testing.assert_array_equal(decoded, np.concatenate(list(frames), axis=1))


def test_page_state_and_clips_over_http(sink):
    page = _get(sink.url).decode("utf-8")
    assert '<canvas id="live"' in page and "/state?after=" in page and "http" not in page.split("<script>")[1]
    assert _state(sink)["seq"] == 0
    clips = [_clip(tr) for tr in range(3)]
    for clip in clips:
        sink.write(clip)
    state = _state(sink)
    assert state["seq"] == 3 and state["counters"]["clips"] == 3 and not state["ended"]
    assert [c["tr"] for c in state["clips"]] == [0, 1, 2] and state["clips"][0]["width"] == 16
    assert [p[0] for p in state["latency"]] == [0, 1, 2]
    assert state["latency"][0][1] == pytest.approx(0.25, abs=1e-3)
    np.testing.assert_array_equal(_decode_png(_get(f"{sink.url}clip/3.png")), frame_strip(clips[2].frames))
    for missing in ("clip/99.png", "nothing"):
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(sink.url + missing)
        assert info.value.code == 404


def test_clips_beyond_the_buffer_are_released(sink):
    for tr in range(20):
        sink.write(_clip(tr))
    state = _state(sink)
    assert state["seq"] == 20 and len(state["clips"]) == 8 and len(sink.state.frames) == 8
    with pytest.raises(urllib.error.HTTPError):
        _get(f"{sink.url}clip/1.png")


def test_events_are_shown_and_counted_and_never_raise(sink):
    sink.event({"type": "bad_tr", "index": 4, "tr": 5, "reason": "3 non-finite values", "action": "hold",
                "time": time.monotonic()})  # fmt: skip
    sink.event({"type": "dropped", "index": 7, "time": time.monotonic()})
    sink.event({"type": "something else"})
    sink.event(None)  # type: ignore[arg-type]  # a broken record is logged, never raised
    sink.event({"type": "dropped", "index": 9, "time": "not a time"})
    state = _state(sink)
    assert state["counters"]["bad"] == 1 and state["counters"]["dropped"] == 2
    assert [(e["type"], e["index"]) for e in state["events"]] == [("bad_tr", 4), ("dropped", 7), ("dropped", 9)]
    assert state["events"][0]["reason"] == "3 non-finite values" and state["events"][0]["action"] == "hold"
    assert _state(sink, events=state["event_seq"])["events"] == []


def test_three_concurrent_viewers_see_every_clip_and_the_final_summary(sink):
    """Three viewers long-poll as the page does (state, then the newest clip's PNG) while clips are written."""
    count, seen = 30, {name: [] for name in "abc"}
    finals: dict[str, dict] = {}

    def viewer(name: str) -> None:
        after = 0
        while True:
            state = _state(sink, after=after, viewer=name, wait=2)
            if state["seq"] > after:
                _decode_png(_get(f"{sink.url}clip/{state['seq']}.png"))
                seen[name].append(state["seq"])
                after = state["seq"]
            elif state["ended"]:
                finals[name] = state
                return

    threads = [threading.Thread(target=viewer, args=(name,), daemon=True) for name in seen]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for tr in range(count):
        sink.write(_clip(tr))
        time.sleep(0.03)
    start = time.monotonic()
    sink.close({"processed": count, "dropped": 0, "bad": 0})
    closed_in = time.monotonic() - start
    for thread in threads:
        thread.join(10)
    assert set(finals) == set("abc")
    for name, state in finals.items():
        assert state["summary"]["processed"] == count and state["counters"]["clips"] == count
        assert seen[name][-1] == count and seen[name] == sorted(seen[name])
        # the clips between two that this viewer got were skipped (2 frames each), counted exactly
        assert state["viewer_skipped_frames"] == 2 * (count - seen[name][0] - (len(seen[name]) - 1))
    assert max(finals[name]["counters"]["viewers"] for name in finals) == 3
    assert closed_in < 2.5  # close waited for the viewers to get the end, not for the whole linger
    with pytest.raises(urllib.error.URLError):
        _get(sink.url, timeout=2)  # then the server stopped


def test_a_slow_viewer_skips_frames_counted_and_never_slows_write(sink):
    first = _clip(0, frames=6, size=256)
    sink.write(first)
    assert _state(sink, viewer="slow")["seq"] == 1
    # stalled viewers: one asks for a clip and never reads it, one connects and sends nothing
    stalled = [socket.create_connection(sink.address, timeout=5) for _ in range(2)]
    stalled[0].sendall(b"GET /clip/1.png HTTP/1.0\r\n\r\n")
    clips = [_clip(tr, frames=6, size=256, seed=0) for tr in range(1, 201)]
    times = []
    for clip in clips:
        start = time.perf_counter()
        sink.write(clip)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    png_bytes(frame_strip(clips[0].frames))
    encode_one = time.perf_counter() - start
    assert sum(times) < encode_one  # 200 writes cost less than encoding one clip: write() encodes nothing
    state = _state(sink, after=1, viewer="slow")  # the slow viewer comes back: it jumps to the newest clip
    assert state["seq"] == 201 and state["viewer_skipped_frames"] == 199 * 6
    assert state["counters"]["skipped_frames"] == 199 * 6
    assert _state(sink, after=201, viewer="slow")["viewer_skipped_frames"] == 199 * 6  # counted once
    for sock in stalled:
        sock.close()


def test_close_without_viewers_is_immediate_and_abort_stops_serving():
    view = WebSink(0, fps=3.0)
    view.write(_clip(0))
    start = time.monotonic()
    view.close({"processed": 1})
    assert time.monotonic() - start < 1.0
    with pytest.raises(urllib.error.URLError):
        _get(view.url, timeout=2)
    other = WebSink(0, fps=3.0)
    _get(other.url)
    other.abort()
    other.abort()  # twice is harmless
    with pytest.raises(urllib.error.URLError):
        _get(other.url, timeout=2)


# --------------------------------------------------------------------------------------------------- bad input


def test_sink_spec_forms_and_a_non_local_address():
    assert parse_sink("web:8080") == ("web", 8080) and parse_sink("web:127.0.0.1:0") == ("web", 0)
    assert parse_sink("web:localhost:9000") == ("web", 9000)
    for spec, words in (("web:0.0.0.0:8080", "localhost address"), ("web:99999", "port number"), ("web", "--sink")):
        with pytest.raises(MindVideoError, match=words):
            parse_sink(spec)


def test_port_in_use_is_one_error_and_opens_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(MindVideoError, match=f"expected 127.0.0.1:{port} to be free for the web view"):
            open_sinks([f"file:{tmp_path / 'a.mp4'}", f"web:{port}"], fps=3.0)
        assert list(tmp_path.iterdir()) == []  # the file sink opened first was removed


@pytest.mark.parametrize("where", ["busy", "10.0.0.1:{port}"])
def test_cli_port_in_use_or_remote_address_exits_2_with_one_line(tmp_path, where):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        web = f"web:127.0.0.1:{port}" if where == "busy" else f"web:{where.format(port=port)}"
        out = tmp_path / "out.mp4"
        args = ["stream", "--checkpoint", str(default_assets() / "checkpoint"), "--source", "stdin"]
        result = CliRunner().invoke(main, [*args, "--sink", f"file:{out}", "--sink", web, "--frames", "2"], input=b"")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert ("to be free for the web view" if where == "busy" else "localhost address") in lines[0]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------- browser


def _chromium(tmp: Path, name: str, url: str, *args: str) -> subprocess.Popen:
    profile = tmp / f"profile-{name}"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
    flags += ["--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}"]
    command = [CHROMIUM, *flags, *args, url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _feed(port: int, vectors: np.ndarray, cadence_s: float, bad: int, burst: range) -> None:
    """Play the scanner over TCP: one TR per ``cadence_s``, TR ``bad`` full of NaN, the TRs in ``burst`` at once."""
    from mindvideo.engine.sources import encode_frame

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for t, vector in enumerate(vectors):
            sock.sendall(encode_frame(np.full_like(vector, np.nan) if t == bad else vector))
            if t + 1 not in burst:
                time.sleep(cadence_s)
        sock.sendall(encode_frame(None))  # end of scan


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_headless_chromium_shows_a_frame_and_the_summary_counters(tmp_path):
    """A demo-model stream into the web view: a screenshot during the stream shows a frame in the live canvas; the
    DOM of a page watching to the end shows counters equal to the stream's summary (a NaN TR: bad; a burst: drops)."""
    from mindvideo.data import FMRITransform

    checkpoint = default_assets() / "checkpoint"
    n_raw = FMRITransform.load(checkpoint / "data_transform").n_raw
    vectors = np.random.default_rng(0).standard_normal((40, n_raw)).astype(np.float32)
    stats = tmp_path / "stats.json"
    command = [sys.executable, "-c", CLI, "stream", "--checkpoint", str(checkpoint), "--source", "tcp:127.0.0.1:0",
               "--sink", "web:127.0.0.1:0", "--frames", "2", "--steps", "2", "--threads", "1", "--tr", "0.25",
               "--stats-json", str(stats)]  # fmt: skip
    stream = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = ""
        while "ready:" not in ready:
            ready = stream.stderr.readline()
            assert ready or stream.poll() is None, "the stream ended before it was ready"
        source_port = int(re.search(r"from 127\.0\.0\.1:(\d+)", ready).group(1))
        url = re.search(r"live view at (http://127\.0\.0\.1:\d+/)", ready).group(1)
        feeder = threading.Thread(target=_feed, args=(source_port, vectors, 0.25, 8, range(20, 26)), daemon=True)
        feeder.start()
        deadline = time.monotonic() + 30
        while json.loads(_get(f"{url}state?viewer=probe"))["seq"] < 3:
            assert time.monotonic() < deadline, "no clip within 30 s"
            time.sleep(0.1)
        shot = tmp_path / "live.png"
        size = "--window-size=1000,620"
        # ?wait=0: short polls, so virtual time runs and the screenshot comes within seconds, mid-stream (a held
        # long poll pauses Chromium's virtual time until the stream ends)
        budget = "--virtual-time-budget=1500"
        shooter = _chromium(tmp_path, "shot", f"{url}?wait=0", f"--screenshot={shot}", size, budget)
        watcher = _chromium(tmp_path, "dom", url, "--dump-dom", "--virtual-time-budget=120000")
        shooter.communicate(timeout=40)
        assert stream.poll() is None, "the screenshot came after the stream ended"
        dom = watcher.communicate(timeout=60)[0].decode("utf-8")
        _, err = stream.communicate(timeout=60)
        assert stream.returncode == 0, err
    finally:
        stream.kill()
    summary = json.loads(stats.read_text())["summary"]
    assert summary["bad"] == 1 and summary["dropped"] >= 1 and summary["processed"] > 10

    image = _decode_png(shot.read_bytes())
    top, bottom, left, right = LIVE_BOX
    live = image[top + 4 : bottom - 4, left + 4 : right - 4].reshape(-1, 3)
    assert (np.abs(live.astype(int) - BACKGROUND).sum(axis=1) > 30).mean() > 0.5  # a frame, not the empty canvas
    assert len(np.unique(live, axis=0)) > 30
    status = image[8:32, 150:260].reshape(-1, 3).astype(int)  # the status badge says "live": green, not grey
    assert (np.abs(status - LIVE_GREEN).sum(axis=1) < 12).sum() > 200

    counters = {key: int(re.search(rf'id="count-{key}">(\d+)<', dom).group(1)) for key in ("clips", "dropped", "bad")}
    assert counters == {"clips": summary["processed"], "dropped": summary["dropped"], "bad": summary["bad"]}
    assert 'data-state="ended"' in dom
    shown = json.loads(html.unescape(re.search(r'<pre id="summary-json">(.*?)</pre>', dom, re.S).group(1)))
    assert shown["processed"] == summary["processed"] and shown["trs_in"] == summary["trs_in"] == 40
