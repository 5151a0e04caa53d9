"""The live browser view of ``mindvideo stream``: ``--sink web:127.0.0.1:PORT`` (or ``web:PORT``).

A standard-library HTTP server in a background thread, bound to 127.0.0.1 only (from another computer: an SSH
tunnel, ``ssh -L PORT:127.0.0.1:PORT host``). The page (``engine/web/index.html``, no build step, no outside
scripts) shows the latest clip playing at the stream's frame rate, the previous few clips, the per-TR latency as a
live plot, the drops and bad TRs as they happen, and counters (clips, dropped, bad TRs) that end equal to the
stream's summary. Any number of viewers may watch at once.

**It never slows generation.** :meth:`WebSink.write` only stores a reference to the clip's frames in a bounded
buffer (the latest :data:`KEEP` clips) and wakes the waiting viewers; PNG encoding happens in the server's
threads, once per clip, when the first viewer asks for it. Each viewer is sent what is latest: a viewer that falls
behind (slow network, busy tab) jumps to the newest clip, and the frames it never got are counted per viewer and
in total (``skipped_frames``), logged at the end.

Endpoints (HTTP/1.0, JSON or PNG):

- ``/`` — the page.
- ``/state?after=SEQ&events=ESEQ&viewer=ID&wait=S`` — long poll: answers at once when a clip newer than ``SEQ``,
  an event newer than ``ESEQ`` or the end exists, else within ``S`` seconds (at most 5). Returns ``seq`` (the newest
  clip's number, from 1), ``clips`` (the buffered clips' ``seq``, ``tr``, ``frames``, ``height``, ``width``,
  ``latency_s``, ``warm``, ``degraded``, ``held``), ``latency`` (``[tr, latency_s]`` of every clip after ``SEQ``),
  ``events`` (drops / bad TRs after ``ESEQ``, with ``t_s`` since the view started), ``event_seq``, ``counters``
  (``clips``, ``dropped``, ``bad``, ``skipped_frames``, ``viewers``), ``viewer_skipped_frames``, ``fps``, ``ended``
  and, once ended, the stream's ``summary``.
- ``/clip/SEQ.png`` — one buffered clip as a PNG strip, its frames side by side (404 once it left the buffer).

**End of the stream.** ``close(summary)`` publishes the final summary; viewers that polled in the last
:data:`ACTIVE_S` seconds get it (their page then shows "ended" and the summary, and keeps showing it). ``close``
waits until each of them has it, at most ``linger_s`` (3 s), then stops the server: a page opened or reloaded after
that finds no server. ``abort()`` stops the server at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from mindvideo.engine.sources import bind_localhost
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "web" / "index.html"
KEEP = 8  # clips kept for viewers (the page shows the latest and the 4 before it)
POINTS = 1000  # latency points kept (a viewer that joins late gets these)
EVENTS = 500  # drop / bad-TR events kept
ACTIVE_S = 3.0  # a viewer that polled within this many seconds is "connected"
MAX_WAIT_S = 5.0
CLIP_PATH = re.compile(r"^/clip/(\d+)\.png$")


def png_bytes(image: np.ndarray, level: int = 6) -> bytes:
    """An ``(H, W, 3)`` uint8 image as PNG (8-bit RGB, no filter, zlib ``level``)."""
    h, w, _ = image.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)  # each row: filter byte 0, then RGB
    raw[:, 1:] = np.ascontiguousarray(image, dtype=np.uint8).reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def frame_strip(frames: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` → ``(H, F·W, 3)``: the frames side by side."""
    f, h, w, c = frames.shape
    return frames.transpose(1, 0, 2, 3).reshape(h, f * w, c)


class _Viewer:
    def __init__(self) -> None:
        self.seen = 0.0  # time.monotonic() of the last poll
        self.skipped_frames = 0
        self.has_final = False


class LiveState:
    """What the page shows, shared by :meth:`WebSink.write` / :meth:`WebSink.event` and the server's threads."""

    def __init__(self, fps: float):
        self.fps, self.start = fps, time.monotonic()
        self.cond = threading.Condition()
        self.clips: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self.frames: dict[int, np.ndarray] = {}  # seq → (F, H, W, 3), for the clips in the buffer
        self.png: dict[int, bytes] = {}  # seq → encoded strip (made on first request)
        self.points: collections.deque[tuple[int, int, float, int]] = collections.deque(maxlen=POINTS)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS)
        self.seq = self.event_seq = 0
        self.counters = {"clips": 0, "dropped": 0, "bad": 0, "skipped_frames": 0}
        self.viewers: dict[str, _Viewer] = {}
        self.summary: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- producer side

    def add_clip(self, clip: Any) -> None:
        """Store one clip (a reference to its frames, no copy) and wake the viewers."""
        frames = np.asarray(clip.frames)
        latency = float(clip.ready - clip.arrival)
        with self.cond:
            self.seq += 1
            if len(self.clips) == KEEP:
                old = self.clips[0]["seq"]
                self.frames.pop(old, None)
                self.png.pop(old, None)
            info = {
                "seq": self.seq,
                "tr": int(clip.tr),
                "frames": int(frames.shape[0]),
                "height": int(frames.shape[1]),
                "width": int(frames.shape[2]),
                "latency_s": round(latency, 6),
                "warm": bool(clip.warm),
                "degraded": bool(clip.degraded),
                "held": [int(i) for i in getattr(clip, "held", ())],
            }
            self.clips.append(info)
            self.frames[self.seq] = frames
            self.points.append((self.seq, int(clip.tr), round(latency, 6), int(frames.shape[0])))
            self.counters["clips"] += 1
            self.cond.notify_all()

    def add_event(self, record: dict[str, Any]) -> None:
        """A dropped window or a bad TR (``run_stream``'s event hook)."""
        kind = record.get("type")
        if kind not in ("dropped", "bad_tr"):
            return
        when = record.get("time")
        t_s = (float(when) - self.start) if isinstance(when, (int, float)) else time.monotonic() - self.start
        event = {
            "type": kind,
            "index": record.get("index"),
            "tr": record.get("tr"),
            "reason": str(record.get("reason", "")),
            "action": str(record.get("action", "")),
            "t_s": round(max(t_s, 0.0), 3),
        }
        with self.cond:
            self.event_seq += 1
            self.events.append({"seq": self.event_seq, **event})
            self.counters["dropped" if kind == "dropped" else "bad"] += 1
            self.cond.notify_all()

    def finish(self, summary: dict[str, Any]) -> None:
        with self.cond:
            self.summary = json.loads(json.dumps(summary, default=str))
            self.cond.notify_all()

    def waiting_viewers(self) -> int:
        """Viewers connected in the last :data:`ACTIVE_S` seconds that have not yet got the final state."""
        now = time.monotonic()
        with self.cond:
            return sum(now - v.seen < ACTIVE_S and not v.has_final for v in self.viewers.values())

    # ----------------------------------------------------------------------------------------- viewer side

    def snapshot(self, after: int, events_after: int, viewer_id: str, wait_s: float) -> dict[str, Any]:
        """The ``/state`` answer for one viewer (long poll: waits up to ``wait_s`` for news)."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        with self.cond:
            while self.seq <= after and self.event_seq <= events_after and self.summary is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            viewer = self.viewers.setdefault(viewer_id, _Viewer())
            now = viewer.seen = time.monotonic()
            if after > 0 and self.seq > after + 1:  # the clips after + 1 … seq - 1 never reach this viewer
                missed = sum(p[3] for p in self.points if after < p[0] < self.seq)
                viewer.skipped_frames += missed
                self.counters["skipped_frames"] += missed
            ended = self.summary is not None
            viewer.has_final = ended and after >= self.seq
            return {
                "seq": self.seq,
                "clips": list(self.clips),
                "latency": [[p[1], p[2]] for p in self.points if p[0] > after],
                "events": [e for e in self.events if e["seq"] > events_after],
                "event_seq": self.event_seq,
                "counters": {**self.counters, "viewers": sum(now - v.seen < ACTIVE_S for v in self.viewers.values())},
                "viewer_skipped_frames": viewer.skipped_frames,
                "fps": self.fps,
                "ended": ended,
                "summary": self.summary,
                "note": "the stream has ended; the server stops within seconds, this page keeps the final state",
            }

    def clip_png(self, seq: int) -> bytes | None:
        """The clip's PNG strip, encoded once (outside the lock), or ``None`` once it left the buffer."""
        with self.cond:
            cached, frames = self.png.get(seq), self.frames.get(seq)
        if cached is not None or frames is None:
            return cached
        data = png_bytes(frame_strip(frames))
        with self.cond:
            if seq in self.frames:
                self.png[seq] = data
        return data


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # a viewer that stops reading is dropped after this long; its thread ends

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        state = self.server.state
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page)
        elif url.path == "/state":
            query = parse_qs(url.query)

            def number(key: str, default: float) -> float:
                try:
                    return float(query.get(key, [default])[0])
                except ValueError:
                    return default

            viewer = query.get("viewer", ["?"])[0][:64]
            answer = state.snapshot(int(number("after", 0)), int(number("events", 0)), viewer, number("wait", 0))
            self._send(200, "application/json", json.dumps(answer).encode("utf-8"))
        elif (match := CLIP_PATH.match(url.path)) is not None:
            data = state.clip_png(int(match.group(1)))
            if data is None:
                self._send(404, "text/plain", b"clip no longer buffered\n")
            else:
                self._send(200, "image/png", data)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:  # the viewer went away
            log.debug("web view: viewer %s gone (%s)", self.client_address, exc)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web view: %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck viewer never keeps the process alive

    def __init__(self, port: int, state: LiveState):
        super().__init__(("127.0.0.1", port), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = bind_localhost(port, "the web view")  # a port in use → MindVideoError
        self.socket.listen(64)  # several viewers, each polling and fetching images
        self.server_address = self.socket.getsockname()
        self.state = state
        self.page = PAGE.read_bytes()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("web view: request from %s failed", client_address, exc_info=True)


class WebSink:
    """``--sink web:127.0.0.1:PORT``: the live view in a browser (see the module docstring). Binds and starts
    serving on creation; :attr:`url` is the page's address (``PORT`` 0: any free port)."""

    def __init__(self, port: int, fps: float, linger_s: float = 3.0):
        if not PAGE.is_file():
            raise MindVideoError(
                f"expected the web view's page at {PAGE}", "no such file", "reinstall mindvideo (package data)"
            )
        self.linger_s = linger_s
        self.state = LiveState(fps)
        self._server: _Server | None = _Server(port, self.state)
        self.address = self._server.server_address[:2]
        self.url = f"http://127.0.0.1:{self.address[1]}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="mindvideo-web-view", daemon=True
        )
        self._thread.start()
        log.info("web view: %s", self.url)

    def write(self, clip: Any) -> None:
        """Store the clip for the viewers; returns at once (no encoding, no network)."""
        self.state.add_clip(clip)

    def event(self, record: dict[str, Any]) -> None:
        """A dropped window or bad TR, shown as it happens. Never raises."""
        try:
            self.state.add_event(record)
        except Exception as exc:  # an event must never stop the scan
            log.warning("web view: event %r not shown (%s: %s)", record, type(exc).__name__, exc)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Publish the final summary, wait (at most ``linger_s``) until every connected viewer has it, stop."""
        if self._server is None:
            return
        self.state.finish(summary or {})
        deadline = time.monotonic() + self.linger_s
        while self.state.waiting_viewers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.abort()
        skipped = self.state.counters["skipped_frames"]
        if skipped:
            log.info("web view: %d frames skipped for slow viewers", skipped)

    def abort(self) -> None:
        """Stop the server now."""
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(Exception):
            server.shutdown()
        server.server_close()
        self._thread.join(timeout=2.0)
