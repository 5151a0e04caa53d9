"""The framed sources of ``mindvideo stream``: TCP (one scanner per session, reconnects) and stdin.

Both read one framing, repeated per TR::

    uint32 big-endian N  |  N bytes of payload

The payload is either ``.npy`` bytes (``numpy.save`` output; detected by its ``\\x93NUMPY`` magic: a vector or a
3-D volume) or raw little-endian float32 values (a vector, ``N/4`` of them). ``N = 0`` ends the scan.
:func:`encode_frame` writes this framing.
"""

from __future__ import annotations

import io
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from mindvideo.engine.sources_base import Arrival, bind_localhost, fault_arrival, log
from mindvideo.errors import MindVideoError

MAX_FRAME_BYTES = 1 << 30  # 1 GiB: larger length prefixes are garbage, not fMRI
MIN_FRAME_LIMIT = 1 << 20  # after the first frame, lengths above max(16 × the largest so far, 1 MiB) are garbage
NPY_MAGIC = b"\x93NUMPY"
REFUSAL = b"error: this mindvideo stream already has a scanner connected (one per session); connection refused\n"


def encode_frame(array: np.ndarray | None, npy: bool = False) -> bytes:
    """One framed TR for the TCP/stdin sources: ``.npy`` bytes (``npy=True``, any shape) or raw float32 values
    (a vector); ``None`` gives the end-of-scan frame (``N = 0``)."""
    if array is None:
        return struct.pack(">I", 0)
    if npy:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        payload = buffer.getvalue()
    else:
        payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return struct.pack(">I", len(payload)) + payload


def decode_payload(payload: bytes, where: str) -> np.ndarray:
    """A frame's payload: ``.npy`` bytes or raw little-endian float32."""
    if payload.startswith(NPY_MAGIC):
        try:
            return np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as exc:
            raise MindVideoError(
                f"expected a readable .npy payload in {where}",
                f"{type(exc).__name__}: {exc}",
                "send numpy.save output",
            ) from None
    if len(payload) % 4:
        raise MindVideoError(
            f"expected float32 values (a multiple of 4 bytes) in {where}", f"{len(payload)} bytes", "fix the sender"
        )
    return np.frombuffer(payload, dtype="<f4").astype(np.float32)


def frame_limit(largest: int) -> int:
    """The largest plausible frame length once frames of up to ``largest`` bytes were read (0: none yet)."""
    return MAX_FRAME_BYTES if largest == 0 else min(MAX_FRAME_BYTES, max(16 * largest, MIN_FRAME_LIMIT))


def bad_length(size: int, largest: int) -> str:
    return f"bad frame length {size} (more than {frame_limit(largest)} bytes): framing lost"


def framed_arrival(count: int, payload: bytes, arrival: float, label: str) -> Arrival:
    """The TR in one frame's payload, or a fault when the payload does not decode (the framing is intact)."""
    name = f"{label}#{count}"
    try:
        return Arrival(count, decode_payload(payload, f"{label} frame {count}"), arrival, name, tr=count)
    except MindVideoError as exc:
        return fault_arrival(count, arrival, name, count, f"unreadable payload: {exc}")


class StreamSource:
    """Framed TRs read from a binary stream (stdin). A truncated last frame, or a length that cannot be a frame,
    is a fault and ends the scan (a pipe cannot be resynchronised); the end of the stream ends it too."""

    def __init__(self, stream: BinaryIO, max_trs: int | None, label: str):
        self.stream, self.max_trs, self.label = stream, max_trs, label
        self.events = {"truncated": 0, "bad_framing": 0}

    def close(self) -> None:
        """stdin stays open (it is not ours)."""

    def __iter__(self) -> Iterator[Arrival]:
        count, largest = 0, 0
        while self.max_trs is None or count < self.max_trs:
            head = self._read(4)
            if not head:
                return
            size = struct.unpack(">I", head)[0] if len(head) == 4 else 0
            if len(head) < 4:
                yield self._last_fault(count, f"truncated frame: {len(head)} of 4 header bytes", "truncated")
                return
            if size == 0:
                return
            if size > frame_limit(largest):
                yield self._last_fault(count, bad_length(size, largest), "bad_framing")
                return
            payload = self._read(size)
            if len(payload) < size:
                yield self._last_fault(count, f"truncated frame: {len(payload)} of {size} bytes", "truncated")
                return
            yield framed_arrival(count, payload, time.monotonic(), self.label)
            count, largest = count + 1, max(largest, size)

    def _last_fault(self, count: int, reason: str, event: str) -> Arrival:
        self.events[event] += 1
        log.warning("%s: the stream ended inside TR %d: ending the scan", self.label, count)
        return fault_arrival(count, time.monotonic(), f"{self.label}#{count}", count, reason)

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes: fewer only at the end of the stream."""
        chunks, need = [], size
        while need:
            chunk = self.stream.read(need)
            if not chunk:
                break
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)


class TcpSource:
    """Framed TRs from one scanner connecting to 127.0.0.1:``port`` (bound on creation).

    One scanner per session: while it is connected, another client gets one ``error: ...`` line on its socket and is
    closed. A dropped connection is a warning, not the end: a partial frame becomes a fault, and the source waits
    ``reconnect_timeout_s`` for the scanner to connect again and resumes (the timeline goes on). A length prefix
    that cannot be a frame is a fault too, and the source resynchronises by dropping that connection and waiting
    for a reconnect. No reconnect in time, ``N = 0`` or ``idle_timeout_s`` without data ends the scan."""

    def __init__(
        self,
        port: int,
        max_trs: int | None,
        connect_timeout_s: float,
        idle_timeout_s: float,
        reconnect_timeout_s: float = 10.0,
    ):
        self.max_trs, self.connect_timeout_s, self.idle_timeout_s = max_trs, connect_timeout_s, idle_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._server: socket.socket | None = bind_localhost(port, "the TCP source")
        self.port = self._server.getsockname()[1]
        self._conn: socket.socket | None = None
        self._buffer = bytearray()
        self.events = dict.fromkeys(("disconnects", "reconnects", "refused_clients", "resyncs"), 0)

    def close(self) -> None:
        for sock in (self._conn, self._server):
            if sock is not None:
                sock.close()
        self._conn = self._server = None

    def __iter__(self) -> Iterator[Arrival]:
        assert self._server is not None, "closed"
        if not self._accept(self.connect_timeout_s):
            raise MindVideoError(
                f"expected a sender to connect to 127.0.0.1:{self.port} within {self.connect_timeout_s:g} s",
                "no connection",
                "start the sender, or raise --connect-timeout",
            )
        count, largest = 0, 0
        while self.max_trs is None or count < self.max_trs:
            if self._conn is None and not self._reconnect(count):
                return
            status, value = self._next_frame(largest)
            if status == "end":
                return
            if status == "frame":
                yield framed_arrival(count, value, time.monotonic(), "tcp")
                count, largest = count + 1, max(largest, len(value))
            elif value:  # the connection was lost inside a frame, or its framing was lost
                yield fault_arrival(count, time.monotonic(), f"tcp#{count}", count, value)
                count += 1

    def _next_frame(self, largest: int) -> tuple[str, bytes | str | None]:
        """``("frame", payload)``, ``("end", None)``, or ``("lost", fault reason or None)`` (connection dropped)."""
        buffer = self._buffer
        while True:
            size = struct.unpack(">I", buffer[:4])[0] if len(buffer) >= 4 else None
            if size == 0:
                return "end", None
            if size is not None and size > frame_limit(largest):
                self.events["resyncs"] += 1
                log.warning(
                    "TCP source: %s; resynchronising: dropping the connection, waiting for a reconnect",
                    bad_length(size, largest),
                )
                self._drop()
                return "lost", bad_length(size, largest)
            if size is not None and len(buffer) >= 4 + size:
                payload = bytes(buffer[4 : 4 + size])
                del buffer[: 4 + size]
                return "frame", payload
            chunk = self._receive()
            if chunk is None:
                log.warning("TCP source: no data for %.1f s: ending the scan", self.idle_timeout_s)
                return "end", None
            if not chunk:
                self.events["disconnects"] += 1
                if size is None:
                    reason = f"truncated frame: {len(buffer)} of 4 header bytes" if buffer else None
                else:
                    reason = f"truncated frame: {len(buffer) - 4} of {size} bytes"
                log.warning("TCP source: the scanner disconnected%s", f" inside a frame ({reason})" if reason else "")
                self._drop()
                return "lost", reason
            buffer += chunk

    def _receive(self) -> bytes | None:
        """The next bytes from the scanner (b"" when it disconnected, None after ``idle_timeout_s`` without any),
        refusing other clients meanwhile."""
        assert self._server is not None and self._conn is not None
        deadline = time.monotonic() + self.idle_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._server, self._conn], [], [], left)
            if self._conn in readable:  # first: a scanner that dropped and reconnected at once is not refused
                try:
                    return self._conn.recv(1 << 20)
                except OSError:  # reset by the peer
                    return b""
            if self._server in readable:
                self._refuse()
        return None

    def _accept(self, timeout: float) -> bool:
        assert self._server is not None
        self._server.settimeout(timeout)
        try:
            self._conn, peer = self._server.accept()
        except TimeoutError:
            return False
        self._conn.settimeout(None)
        self._buffer.clear()
        log.info("TCP source: scanner %s:%d connected", *peer)
        return True

    def _reconnect(self, count: int) -> bool:
        wait = self.reconnect_timeout_s
        log.warning("TCP source: waiting up to %.1f s for the scanner to reconnect (after %d TRs)", wait, count)
        if not self._accept(wait):
            log.warning("TCP source: no reconnect within %.1f s: ending the scan after %d TRs", wait, count)
            return False
        self.events["reconnects"] += 1
        log.warning("TCP source: the scanner reconnected; resuming at TR %d", count)
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._buffer.clear()

    def _refuse(self) -> None:
        """Accept a second client only to tell it that this session has its scanner, then close it."""
        assert self._server is not None
        self._server.settimeout(0.0)
        try:
            client, peer = self._server.accept()
        except OSError:  # gone already
            return
        self.events["refused_clients"] += 1
        log.warning("TCP source: refused a second client %s:%d: one scanner per session", *peer)
        with client:
            try:
                client.settimeout(0.2)
                client.sendall(REFUSAL)
                client.shutdown(socket.SHUT_WR)
                end = time.monotonic() + 0.2  # read what it sent so the close does not reset the line away
                while time.monotonic() < end and client.recv(1 << 16):
                    pass
            except OSError:
                pass
