"""Where the clips of ``mindvideo stream`` go: a video file, a TCP consumer on 127.0.0.1, stdout, a live window.

Every sink has ``write(clip)`` (called in the decoder's worker thread, in TR order), ``close(summary)`` (end of
the scan) and ``abort()`` (error: no partial output). TCP and stdout share one framing (:func:`read_clips`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mindvideo.engine.sources import bind_localhost, check_localhost, parse_port
from mindvideo.engine.stream import Clip
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import temp_file

log = logging.getLogger(__name__)

SINK_KINDS = ("file", "tcp", "stdout", "window", "lsl", "web")
FILE_SUFFIXES = (".mp4", ".gif")


def parse_sink(spec: str) -> tuple[str, Any]:
    """``file:OUT.mp4|.gif`` | ``tcp:[127.0.0.1:]PORT`` | ``stdout`` | ``window`` | ``lsl:NAME`` |
    ``web:[127.0.0.1:]PORT`` → (kind, argument)."""
    kind, _, arg = spec.partition(":")
    if kind in ("stdout", "window") and not arg:
        return kind, None
    if kind == "file" and arg:
        path = Path(arg)
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise MindVideoError(
                f"expected a sink file ending in {', '.join(FILE_SUFFIXES)}", repr(arg), "e.g. --sink file:out.mp4"
            )
        return kind, path
    if kind in ("tcp", "web") and arg:  # web: the live browser view (mindvideo.engine.web_view), 127.0.0.1 only
        host, _, port = arg.rpartition(":")
        check_localhost(host or "127.0.0.1", spec)
        return kind, parse_port(port, f"--sink {spec}")
    if kind == "lsl" and arg:
        from mindvideo.engine.lsl import parse_sink_arg

        parse_sink_arg(arg)  # checked now; pylsl is imported only when the sink opens
        return kind, arg
    raise MindVideoError(
        "expected --sink file:OUT.mp4|OUT.gif, tcp:PORT, stdout, window, lsl:NAME or web:PORT",
        repr(spec),
        "fix the --sink option",
    )


def open_sinks(
    specs: list[str],
    *,
    fps: float,
    frames: int | None = None,
    connect_timeout_s: float = 60.0,
    stdout: BinaryIO | None = None,
    decoder: Any = None,
    pipeline: Any = None,
) -> list[Any]:
    """Open every ``--sink`` (parsed first, so a bad spec opens nothing); ``frames``: nominal frames per clip.
    ``decoder`` / ``pipeline``: the StreamingDecoder and its model, for an LSL sink's embedding stream."""
    parsed = [parse_sink(spec) for spec in specs]
    if sum(kind == "stdout" for kind, _ in parsed) > 1:
        raise MindVideoError("expected at most one stdout sink", f"{len(parsed)} sinks", "drop the extra one")
    sinks: list[Any] = []
    try:
        for kind, arg in parsed:
            if kind == "file":
                sinks.append(FileSink(arg, fps, frames))
            elif kind == "tcp":
                sinks.append(TcpSink(arg, connect_timeout_s))
            elif kind == "stdout":
                sinks.append(StreamSink(stdout or sys.stdout.buffer, "stdout"))
            elif kind == "lsl":
                from mindvideo.engine.lsl import open_lsl_sink

                sinks.append(open_lsl_sink(arg, pipeline=pipeline, decoder=decoder))
            elif kind == "web":
                from mindvideo.engine.web_view import WebSink

                sinks.append(WebSink(arg, fps))
            elif display_available():
                sinks.append(WindowSink(fps))
            else:
                log.warning("no display (DISPLAY / WAYLAND_DISPLAY unset) or no tkinter: the live window is skipped")
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return sinks


# --------------------------------------------------------------------------------------------------- file


def fit_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """``(f, H, W, 3)`` → ``(count, H, W, 3)`` by repeating / picking frames evenly (nearest earlier frame)."""
    if len(frames) == count:
        return frames
    return frames[(np.arange(count) * len(frames)) // count]


class FileSink:
    """One ``.mp4`` (streamed) or ``.gif`` (kept in memory) for the whole scan.

    **File** (``file:OUT.mp4`` / ``file:OUT.gif``): one video at ``fps`` (default frames per clip / TR) written to a
    temporary sibling and renamed into place by ``close``. ``.mp4`` is encoded clip by clip as clips arrive (H.264,
    constant memory for any scan length); ``.gif`` keeps every frame in memory until ``close`` (short scans only). The
    timeline stays aligned with the TRs: a clip with fewer frames (policy ``skip-frames``) is stretched to the nominal
    count by repeating frames, and a dropped TR (or one whose window was skipped by ``--on-bad-tr skip``) shows the
    previous frame held for one TR. The file gets a new file's mode under the umask (0644 under 022); the temporary
    file never outlives the sink: ``close`` renames it, ``abort`` or a failure to finish removes it.
    """

    def __init__(self, path: Path, fps: float, frames_per_tr: int | None = None):
        self.path, self.fps, self.frames_per_tr = Path(path), fps, frames_per_tr
        self.tmp: Path | None = temp_file(self.path)  # a new file's mode under the umask
        self._container: Any = None
        self._stream: Any = None
        self._gif: list[np.ndarray] = []
        self._next_tr, self._last = 0, None

    def write(self, clip: Clip) -> None:
        """Append one TR's frames (and hold the last frame over any dropped TRs before it)."""
        per_tr = self.frames_per_tr = self.frames_per_tr or clip.frames.shape[0]
        if clip.tr > self._next_tr:
            log.info("file sink: TRs %d–%d missing (dropped); holding the last frame", self._next_tr, clip.tr - 1)
            hold = self._last if self._last is not None else np.zeros_like(clip.frames[0])
            for _ in range((clip.tr - self._next_tr) * per_tr):
                self._add(hold)
        for frame in fit_frames(clip.frames, per_tr):
            self._add(frame)
        self._next_tr, self._last = clip.tr + 1, clip.frames[-1]

    def _add(self, frame: np.ndarray) -> None:
        if self.path.suffix.lower() == ".gif":
            self._gif.append(frame)
            return
        import av

        if self._container is None:
            self._open_mp4(frame.shape[0], frame.shape[1])
        h, w = self._stream.height, self._stream.width
        if frame.shape[:2] != (h, w):  # yuv420p needs even sizes: pad by edge
            frame = np.pad(frame, ((0, h - frame.shape[0]), (0, w - frame.shape[1]), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def _open_mp4(self, height: int, width: int) -> None:
        import fractions

        import av

        self._container = av.open(str(self.tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fractions.Fraction(self.fps).limit_denominator(1000))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt, self._stream.options = "yuv420p", {"crf": "18"}

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Finish the video and rename it into place (on failure: remove the temporary file and raise)."""
        if self.tmp is None:
            return
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        os.replace(self.tmp, self.path)
        self.tmp = None
        log.info("file sink: wrote %s", self.path)

    def _finish(self) -> None:
        if self.path.suffix.lower() == ".gif":
            import imageio.v3 as iio

            iio.imwrite(self.tmp, np.stack(self._gif), extension=".gif", duration=1000.0 / self.fps, loop=0)
            self._gif = []
        elif self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None

    def abort(self) -> None:
        """Drop the temporary file: no partial output."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        self._gif = []


# --------------------------------------------------------------------------------------------------- framed


def encode_clip(clip: Clip) -> bytes:
    """One clip in the TCP/stdout framing (:func:`read_clips`)."""
    f, h, w, c = clip.frames.shape
    header = {
        "tr": clip.tr,
        "frames": f,
        "height": h,
        "width": w,
        "channels": c,
        "dtype": "uint8",
        "latency_s": round(clip.ready - clip.arrival, 6),
        "warm": clip.warm,
        "degraded": clip.degraded,
        "settings": clip.settings,
        "held": list(clip.held),
    }
    text = json.dumps(header).encode("utf-8")
    return struct.pack(">I", len(text)) + text + np.ascontiguousarray(clip.frames, dtype=np.uint8).tobytes()


def encode_end(summary: dict[str, Any]) -> bytes:
    text = json.dumps({"end": True, "summary": summary}, default=str).encode("utf-8")
    return struct.pack(">I", len(text)) + text


def read_clips(stream: BinaryIO) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Parse the TCP/stdout framing: ``(header, frames (F, H, W, 3) uint8)`` per clip, then ``(end header, None)``.

    **TCP** (``tcp:PORT`` or ``tcp:127.0.0.1:PORT``; the stream listens, one consumer connects — the first write waits
    up to ``connect_timeout_s`` for it) and **stdout** (``stdout``) share one framing, per clip::

        uint32 big-endian N  |  N bytes of UTF-8 JSON header  |  F·H·W·3 bytes: RGB uint8 (F, H, W, 3), C order

    with header ``{"tr", "frames", "height", "width", "channels": 3, "dtype": "uint8", "latency_s", "warm", "degraded",
    "settings", "held"}`` (``held``: TR indices of the clip's window that were bad and replaced by the last good TR);
    the end of the scan is a header-only message ``{"end": true, "summary": {...}}``.
    """

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = stream.read(n - len(data))
            if not chunk:
                raise EOFError(f"clip stream ended inside a message: {len(data)} of its {n} bytes arrived")
            data += chunk
        return data

    while True:
        (size,) = struct.unpack(">I", exact(4))
        header = json.loads(exact(size).decode("utf-8"))
        if header.get("end"):
            yield header, None
            return
        shape = (header["frames"], header["height"], header["width"], header["channels"])
        yield header, np.frombuffer(exact(int(np.prod(shape))), dtype=np.uint8).reshape(shape)


class StreamSink:
    """Framed clips to a binary stream (stdout)."""

    def __init__(self, stream: BinaryIO, label: str):
        self.stream, self.label = stream, label

    def write(self, clip: Clip) -> None:
        self.stream.write(encode_clip(clip))
        self.stream.flush()

    def close(self, summary: dict[str, Any]) -> None:
        self.stream.write(encode_end(summary))
        self.stream.flush()

    def abort(self) -> None:
        """Nothing to undo: clips already written to a stream are out."""


class TcpSink:
    """Framed clips to one consumer connecting to 127.0.0.1:``port`` (bound on creation)."""

    def __init__(self, port: int, connect_timeout_s: float = 60.0):
        self.connect_timeout_s = connect_timeout_s
        self._server: socket.socket | None = bind_localhost(port, "the TCP sink")
        self.port = self._server.getsockname()[1]
        self._conn: socket.socket | None = None

    def _send(self, data: bytes) -> None:
        if self._conn is None:
            assert self._server is not None, "closed"
            self._server.settimeout(self.connect_timeout_s)
            try:
                self._conn, peer = self._server.accept()
            except TimeoutError:
                raise MindVideoError(
                    f"expected a consumer to connect to 127.0.0.1:{self.port} within {self.connect_timeout_s:g} s",
                    "no connection",
                    "start the consumer first, or raise --connect-timeout",
                ) from None
            self._conn.settimeout(self.connect_timeout_s)
            log.info("TCP sink: consumer %s:%d connected", *peer)
        try:
            self._conn.sendall(data)
        except OSError as exc:
            raise MindVideoError(
                f"expected the consumer on 127.0.0.1:{self.port} to keep reading", str(exc), "restart the consumer"
            ) from None

    def write(self, clip: Clip) -> None:
        self._send(encode_clip(clip))

    def close(self, summary: dict[str, Any]) -> None:
        try:
            self._send(encode_end(summary))
        finally:
            self.abort()

    def abort(self) -> None:
        """Close both sockets."""
        for sock in (self._conn, self._server):
            if sock is not None:
                sock.close()
        self._conn = self._server = None


# --------------------------------------------------------------------------------------------------- window


def display_available() -> bool:
    """A GUI display and tkinter exist (Linux/BSD need ``DISPLAY`` or ``WAYLAND_DISPLAY``)."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd")) and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return False
    return True


def ppm_bytes(frame: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 frame as binary PPM (what ``tkinter.PhotoImage(data=...)`` reads)."""
    h, w, _ = frame.shape
    return f"P6 {w} {h} 255\n".encode("ascii") + np.ascontiguousarray(frame, dtype=np.uint8).tobytes()


class WindowSink:
    """A live preview in a tkinter window owned by its own thread.

    **Window** (``window``): a tkinter preview at ``fps`` in its own thread, only when a display exists (``DISPLAY`` /
    ``WAYLAND_DISPLAY`` on Linux); without one it is skipped with a warning. It never slows the decoder: when the
    preview lags, older frames are skipped.
    """

    def __init__(self, fps: float, zoom_to: int = 256):
        self.fps, self.zoom_to = fps, zoom_to
        self._frames: queue.Queue = queue.Queue(maxsize=64)
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="mindvideo-stream-window", daemon=True)
        self._thread.start()

    def write(self, clip: Clip) -> None:
        for frame in clip.frames:
            if not self._thread.is_alive():
                return
            while True:
                try:
                    self._frames.put_nowait(frame)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._frames.get_nowait()
                        self.skipped += 1

    def close(self, summary: dict[str, Any] | None = None) -> None:
        self.abort()
        if self.skipped:
            log.info("window: %d frames skipped to keep the preview live", self.skipped)

    def abort(self) -> None:
        with contextlib.suppress(queue.Full):
            self._frames.put_nowait(None)
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        import tkinter as tk

        try:
            root = tk.Tk()
            root.title("mindvideo stream")
            label = tk.Label(root)
            label.pack()
        except tk.TclError as exc:
            log.warning("window: cannot open a display (%s); the live window is skipped", exc)
            return
        delay = max(1, round(1000 / self.fps))

        def tick() -> None:
            try:
                frame = self._frames.get_nowait()
            except queue.Empty:
                root.after(delay, tick)
                return
            if frame is None:
                root.destroy()
                return
            image = tk.PhotoImage(data=ppm_bytes(frame), format="PPM")
            image = image.zoom(max(1, self.zoom_to // max(frame.shape[:2])))
            label.configure(image=image)
            label.image = image  # keep a reference: Tk does not
            root.after(delay, tick)

        root.after(delay, tick)
        try:
            root.mainloop()
        except tk.TclError as exc:  # the user closed the window
            log.warning("window closed (%s)", exc)
