"""What every ``mindvideo stream`` source shares: the :class:`Arrival` record and the localhost-only socket helpers.

A leaf module: :mod:`mindvideo.engine.sources`, ``sources_folder`` and ``sources_tcp`` import it, it imports none
of them.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from typing import Any

from mindvideo.errors import MindVideoError

log = logging.getLogger("mindvideo.engine.sources")

LOCALHOST = ("127.0.0.1", "localhost")


@dataclasses.dataclass
class Arrival:
    """One TR from a source. A source yields exactly one per timeline position, faults included."""

    index: int  # 0-based position in the timeline
    payload: Any  # np.ndarray (vector or 3-D volume) or a nibabel image; None when ``fault`` is set
    arrival: float  # time.monotonic() when the TR was first seen / fully received (s)
    name: str  # file name or "tcp#N" / "stdin#N"
    tr: int | None = None  # the scanner's TR number when known (folder: from the file name; tcp/stdin: a count)
    fault: str | None = None  # set (payload None) when this TR was expected but could not be read: the reason


def fault_arrival(index: int, arrival: float, name: str, tr: int | None, reason: str) -> Arrival:
    """An expected TR that could not be read. Logged at INFO only: the consumer (the streaming decoder) reports each
    bad TR once, as a warning with its reason and what it did about it."""
    log.info("TR %d (%s): %s", index, name, reason)
    return Arrival(index, None, arrival, name, tr=tr, fault=reason)


def parse_port(text: str, what: str) -> int:
    """A TCP port 0–65535 (0: any free port, logged once bound)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise MindVideoError(f"expected a port number 0–65535 in {what}", repr(text), "e.g. tcp:127.0.0.1:5555")
    return port


def check_localhost(host: str, spec: str) -> None:
    if host not in LOCALHOST:
        raise MindVideoError(
            f"expected a localhost address (127.0.0.1) in {spec}",
            repr(host),
            "the stream only binds 127.0.0.1; reach it from elsewhere through an SSH tunnel",
        )


def bind_localhost(port: int, what: str) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port``; a port in use raises :class:`MindVideoError`."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebinding after TIME_WAIT; never a live listener
    try:
        server.bind(("127.0.0.1", port))
        server.listen(4)  # a second client is accepted only to be told it is refused
    except OSError as exc:
        server.close()
        raise MindVideoError(
            f"expected 127.0.0.1:{port} to be free for {what}", exc.strerror or str(exc), "pick another port"
        ) from None
    logging.getLogger("mindvideo.engine.sources").info("%s listening on 127.0.0.1:%d", what, server.getsockname()[1])
    return server
