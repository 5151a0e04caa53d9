"""Where the TRs of ``mindvideo stream`` come from: a watched folder, a TCP socket on 127.0.0.1, stdin.

Every source is an iterable of :class:`Arrival` (one per timeline position, in scan order; an expected TR that could
not be read is an Arrival with ``fault`` set) with a ``close()`` and an ``events`` dict of counters; the payload is
what :func:`mindvideo.engine.stream_input.raw_frame` accepts (a 3-D volume, a one-row CIFTI image, a vector). The
folder source lives in :mod:`mindvideo.engine.sources_folder`, TCP and stdin (one framing) in
:mod:`mindvideo.engine.sources_tcp`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import BinaryIO

from mindvideo.engine.sources_base import LOCALHOST, Arrival, bind_localhost, check_localhost, parse_port
from mindvideo.engine.sources_folder import (
    DICOM_SUFFIXES,
    IGNORED_SUFFIXES,
    NIFTI_SUFFIXES,
    FolderSource,
    NotReady,
    Unreadable,
    natural_key,
    read_dicom,
    read_tr_file,
    tr_file_kind,
    tr_number,
)
from mindvideo.engine.sources_tcp import (
    MAX_FRAME_BYTES,
    NPY_MAGIC,
    StreamSource,
    TcpSource,
    decode_payload,
    encode_frame,
)
from mindvideo.errors import MindVideoError

__all__ = [
    "DICOM_SUFFIXES",
    "IGNORED_SUFFIXES",
    "LOCALHOST",
    "MAX_FRAME_BYTES",
    "NIFTI_SUFFIXES",
    "NPY_MAGIC",
    "SOURCE_KINDS",
    "Arrival",
    "FolderSource",
    "NotReady",
    "SourceSpec",
    "StreamSource",
    "TcpSource",
    "Unreadable",
    "bind_localhost",
    "check_localhost",
    "decode_payload",
    "encode_frame",
    "natural_key",
    "open_source",
    "parse_port",
    "parse_source",
    "read_dicom",
    "read_tr_file",
    "tr_file_kind",
    "tr_number",
]

SOURCE_KINDS = ("folder", "tcp", "stdin", "lsl")


@dataclasses.dataclass
class SourceSpec:
    """A parsed ``--source``: kind and its argument."""

    kind: str
    folder: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    name: str = ""  # lsl: the stream name


def parse_source(spec: str) -> SourceSpec:
    """``folder:DIR`` | ``tcp:127.0.0.1:PORT`` (or ``tcp:PORT``) | ``stdin``; anything else raises."""
    kind, _, arg = spec.partition(":")
    if kind == "stdin" and not arg:
        return SourceSpec("stdin")
    if kind == "folder" and arg:
        folder = Path(arg)
        if not folder.is_dir():
            raise MindVideoError(f"expected a folder to watch at {folder}", "no such folder", "create it first")
        return SourceSpec("folder", folder=folder)
    if kind == "tcp" and arg:
        host, _, port = arg.rpartition(":")
        host = host or "127.0.0.1"
        check_localhost(host, spec)
        return SourceSpec("tcp", host="127.0.0.1", port=parse_port(port, f"--source {spec}"))
    if kind == "lsl" and arg.strip():
        return SourceSpec("lsl", name=arg)
    raise MindVideoError(
        "expected --source folder:DIR, tcp:127.0.0.1:PORT, stdin or lsl:NAME", repr(spec), "fix the --source option"
    )


def open_source(
    spec: str | SourceSpec,
    *,
    max_trs: int | None = None,
    idle_timeout_s: float = 20.0,
    connect_timeout_s: float = 60.0,
    poll_s: float = 0.02,
    corrupt_after_s: float = 2.0,
    stdin: BinaryIO | None = None,
    settle_s: float = 0.0,
    reconnect_timeout_s: float = 10.0,
    reorder_s: float = 1.0,
    channels: int | None = None,
) -> FolderSource | TcpSource | StreamSource:
    """Open a parsed or textual ``--source``. A TCP source binds its port here (so "port in use" comes first).

    ``settle_s`` (folder): a file is taken once its size has not changed for that long; ``reorder_s`` (folder): how
    long a missing TR's file may come after a later one's; ``reconnect_timeout_s`` (tcp): how long a dropped scanner
    has to connect again before the scan ends. ``lsl``: resolves the stream within ``connect_timeout_s`` and checks
    its type and channel count (``channels``: the raw voxel count) here; see :mod:`mindvideo.engine.lsl`."""
    spec = parse_source(spec) if isinstance(spec, str) else spec
    for name, value in (("--settle", settle_s), ("--reconnect-timeout", reconnect_timeout_s)):
        if not value >= 0:
            raise MindVideoError(f"expected {name} ≥ 0 seconds", str(value), f"pass e.g. {name} 1")
    if spec.kind == "folder":
        return FolderSource(
            spec.folder, max_trs, idle_timeout_s, poll_s, corrupt_after_s, settle_s=settle_s, reorder_s=reorder_s
        )
    if spec.kind == "tcp":
        return TcpSource(spec.port, max_trs, connect_timeout_s, idle_timeout_s, reconnect_timeout_s)
    if spec.kind == "lsl":
        from mindvideo.engine.lsl import LslSource

        return LslSource(
            spec.name,
            channels,
            max_trs=max_trs,
            resolve_timeout_s=connect_timeout_s,
            idle_timeout_s=idle_timeout_s,
            reconnect_timeout_s=reconnect_timeout_s,
        )
    return StreamSource(stdin or sys.stdin.buffer, max_trs, "stdin")
