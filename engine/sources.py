"""Where the TRs of ``mindvideo stream`` come from: a watched folder, a TCP socket on 127.0.0.1, stdin.

Every source is an iterable of :class:`Arrival` (one TR each, in scan order) with a ``close()``; the payload is
what :func:`mindvideo.engine.stream_input.raw_frame` accepts (a 3-D volume, a one-row CIFTI image, a vector).
TCP and stdin share one framing (:class:`StreamSource`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "tcp", "stdin", "lsl")
LOCALHOST = ("127.0.0.1", "localhost")
MAX_FRAME_BYTES = 1 << 30  # 1 GiB: larger length prefixes are garbage, not fMRI
NPY_MAGIC = b"\x93NUMPY"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".lock", ".crdownload", ".swp")


@dataclasses.dataclass
class Arrival:
    """One TR from a source."""

    index: int  # 0-based, in arrival order
    payload: Any  # np.ndarray (vector or 3-D volume) or a nibabel image
    arrival: float  # time.monotonic() when the TR was first seen / fully received (s)
    name: str  # file name or "tcp#N" / "stdin#N"
    tr: int | None = None  # the scanner's TR number when known (folder: from the file name; tcp/stdin: a count)
    fault: str | None = None  # set (payload None) when this TR was expected but could not be read: the reason


@dataclasses.dataclass
class SourceSpec:
    """A parsed ``--source``: kind and its argument."""

    kind: str
    folder: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    name: str = ""  # lsl: the stream name


def parse_port(text: str, what: str) -> int:
    """A TCP port 0–65535 (0: any free port, logged once bound)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise MindVideoError(f"expected a port number 0–65535 in {what}", repr(text), "e.g. tcp:127.0.0.1:5555")
    return port


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
        server.listen(1)
    except OSError as exc:
        server.close()
        raise MindVideoError(
            f"expected 127.0.0.1:{port} to be free for {what}", exc.strerror or str(exc), "pick another port"
        ) from None
    log.info("%s listening on 127.0.0.1:%d", what, server.getsockname()[1])
    return server


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
    channels: int | None = None,
) -> FolderSource | TcpSource | StreamSource:
    """Open a parsed or textual ``--source``. A TCP source binds its port here (so "port in use" comes first).
    ``lsl``: resolves the stream within ``connect_timeout_s`` and checks its type and channel count (``channels``:
    the raw voxel count) here; see :mod:`mindvideo.engine.lsl`."""
    spec = parse_source(spec) if isinstance(spec, str) else spec
    if spec.kind == "folder":
        return FolderSource(spec.folder, max_trs, idle_timeout_s, poll_s, corrupt_after_s)
    if spec.kind == "tcp":
        return TcpSource(spec.port, max_trs, connect_timeout_s, idle_timeout_s)
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


# --------------------------------------------------------------------------------------------------- folder


class NotReady(Exception):
    """A per-TR file that does not parse (yet)."""


def natural_key(name: str) -> tuple:
    """``vol_2`` sorts before ``vol_10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def tr_file_kind(name: str) -> str | None:
    """``nifti`` / ``cifti`` / ``npy`` / ``dicom`` for per-TR files, None for files to ignore."""
    lower = name.lower()
    if lower.startswith(".") or lower.endswith(IGNORED_SUFFIXES):
        return None
    if lower.endswith(".dtseries.nii"):
        return "cifti"
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(".npy"):
        return "npy"
    return "dicom" if lower.endswith(DICOM_SUFFIXES) else None


def read_tr_file(path: Path) -> Any:
    """One per-TR file's payload; raises :class:`NotReady` while it does not parse, :class:`MindVideoError` when
    it parses but is not one TR (or needs a missing reader)."""
    kind = tr_file_kind(path.name)
    if kind == "dicom":
        return read_dicom(path)
    try:
        if kind == "npy":
            return np.load(path, allow_pickle=False)
        return _read_nifti(path, kind)
    except (MindVideoError, NotReady):
        raise
    except Exception as exc:  # truncated gzip, short data, a header still being written
        raise NotReady(f"{type(exc).__name__}: {exc}") from None


def _read_nifti(path: Path, kind: str) -> Any:
    import nibabel as nib

    img = nib.load(str(path), mmap=False)
    header = getattr(img, "nifti_header", img.header)
    if not path.name.lower().endswith(".gz"):  # uncompressed: the file must hold what the header promises
        need = int(header.get_data_offset()) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
        if path.stat().st_size < need:
            raise NotReady(f"{path.stat().st_size} of {need} bytes")
    data = np.asarray(img.dataobj, dtype=np.float32)  # reads everything now: the file may go away
    if kind == "cifti":
        return nib.Cifti2Image(data, header=img.header)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MindVideoError(
            f"expected one 3-D volume per file in the watched folder ({path.name})",
            f"shape {data.shape}",
            "export one volume per TR",
        )
    return nib.Nifti1Image(data, img.affine)


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM volume as ``(columns, rows, slices)`` float32: a multi-frame file's frames, or a Siemens mosaic
    (``NumberOfImagesInMosaic``) cut into its slices; rescale slope/intercept applied. Needs pydicom. The voxel
    order is the DICOM pixel grid: the training mask must be in that grid (check the orientation on your scanner)."""
    try:
        import pydicom
    except ImportError:
        raise MindVideoError(
            f"expected pydicom to read the DICOM file {path.name}",
            "pydicom is not installed",
            "pip install pydicom, or have the scanner export NIfTI",
        ) from None
    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise NotReady(f"{type(exc).__name__}: {exc}") from None
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    mosaic = ds.get((0x0019, 0x100A))  # Siemens: NumberOfImagesInMosaic
    if pixels.ndim == 2 and mosaic is not None:
        count = int(mosaic.value)
        tiles = math.ceil(math.sqrt(count))
        rows, cols = pixels.shape[0] // tiles, pixels.shape[1] // tiles
        cells = (divmod(i, tiles) for i in range(count))
        pixels = np.stack([pixels[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] for r, c in cells])
    if pixels.ndim != 3:
        raise MindVideoError(
            f"expected a 3-D DICOM volume (multi-frame or mosaic) in {path.name}",
            f"pixel array {pixels.shape}",
            "export one volume per file",
        )
    return np.ascontiguousarray(pixels.transpose(2, 1, 0))  # (slices, rows, cols) → (cols, rows, slices)


@dataclasses.dataclass
class _Pending:
    first_seen: float
    size: int = -1
    stable_since: float = 0.0


class FolderSource:
    """Per-TR files appearing in ``folder``. A file named before one already taken is skipped with a warning (it
    would break the window order). Memory: the set of names already taken.

    **Folder** (``folder:DIR``): per-TR files as real-time scanner exports write them — 3-D NIfTI (``.nii``,
    ``.nii.gz``), one-row CIFTI (``.dtseries.nii``), ``.npy`` vectors/volumes, DICOM (``.dcm``/``.ima``, read with
    pydicom only if it is installed). Files are taken in natural name order (``vol_2`` before ``vol_10``); a file is
    taken once it parses completely (an uncompressed NIfTI must hold the bytes its header promises, a gzip stream must
    end, an ``.npy`` must hold its shape), so partially written files are waited for; one that still does not parse
    after its size has stayed constant for ``corrupt_after_s`` is an error. Hidden and ``.tmp``/``.part`` files are
    ignored. The scan ends after ``max_trs`` TRs or ``idle_timeout_s`` without a new file."""

    def __init__(self, folder: Path, max_trs: int | None, idle_timeout_s: float, poll_s: float, corrupt_s: float):
        self.folder, self.max_trs, self.idle_timeout_s = Path(folder), max_trs, idle_timeout_s
        self.poll_s, self.corrupt_s = poll_s, corrupt_s
        self._taken: set[str] = set()  # ~100 bytes per TR
        self._pending: dict[str, _Pending] = {}
        self._last: tuple | None = None  # natural key of the last file taken

    def close(self) -> None:
        """Nothing to release (the folder is only read)."""

    def __iter__(self) -> Iterator[Arrival]:
        count, last = 0, time.monotonic()
        while self.max_trs is None or count < self.max_trs:
            ready, waiting = self._ready_files()
            for name, payload, first_seen in ready:
                yield Arrival(count, payload, first_seen, name)
                count, last = count + 1, time.monotonic()
                if count == self.max_trs:
                    return
            if ready:
                continue
            if waiting:  # a file still being written (or corrupt: _try_read raises after corrupt_after_s)
                last = time.monotonic()
            elif time.monotonic() - last > self.idle_timeout_s:
                wait = self.idle_timeout_s
                log.warning("no new file in %s for %.1f s: ending the scan after %d TRs", self.folder, wait, count)
                return
            time.sleep(self.poll_s)

    def _ready_files(self) -> tuple[list[tuple[str, Any, float]], bool]:
        """Complete files in name order, stopping at the first one still being written (keeps scan order); and
        whether such a file is waiting."""
        now = time.monotonic()
        with os.scandir(self.folder) as entries:
            names = [e.name for e in entries if e.name not in self._taken and tr_file_kind(e.name) and e.is_file()]
        for gone in set(self._pending).difference(names):  # renamed or removed before it was complete
            del self._pending[gone]
        out = []
        for name in sorted(names, key=natural_key):
            if self._last is not None and natural_key(name) < self._last:  # scan order is name order
                log.warning("skipping %s: it appeared after later TRs were read (out of scan order)", name)
                self._taken.add(name)
                continue
            state = self._pending.setdefault(name, _Pending(first_seen=now, stable_since=now))
            payload = self._try_read(self.folder / name, state, now)
            if payload is None:
                return out, True
            self._taken.add(name)
            self._last = natural_key(name)
            del self._pending[name]
            out.append((name, payload, state.first_seen))
        return out, False

    def _try_read(self, path: Path, state: _Pending, now: float) -> Any:
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # renamed or removed between listing and reading
            return None
        if size != state.size:
            state.size, state.stable_since = size, now
        try:
            return read_tr_file(path)
        except NotReady as exc:
            if now - state.stable_since < self.corrupt_s:
                return None
            raise MindVideoError(
                f"expected a complete per-TR file at {path}",
                f"a file that does not parse after {self.corrupt_s:g} s at a constant {size} bytes ({exc})",
                "check the scanner export, or remove the corrupt file",
            ) from None


# --------------------------------------------------------------------------------------------------- framed


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


class StreamSource:
    """Framed TRs read from a binary stream (stdin, or an accepted socket's file).

    **TCP** (``tcp:127.0.0.1:PORT``; the stream listens, one sender connects) and **stdin** (``stdin``) share one
    framing, repeated per TR::

        uint32 big-endian N  |  N bytes of payload

    The payload is either ``.npy`` bytes (``numpy.save`` output; detected by its ``\\x93NUMPY`` magic: a vector or a
    3-D volume) or raw little-endian float32 values (a vector, ``N/4`` of them). ``N = 0`` or the end of the
    connection/stream ends the scan. :func:`encode_frame` writes this framing. Only 127.0.0.1 is ever bound.
    """

    def __init__(self, stream: BinaryIO, max_trs: int | None, label: str):
        self.stream, self.max_trs, self.label = stream, max_trs, label

    def close(self) -> None:
        """stdin stays open (it is not ours)."""

    def __iter__(self) -> Iterator[Arrival]:
        count = 0
        while self.max_trs is None or count < self.max_trs:
            head = self._read(4, allow_eof=True)
            if head is None:
                return
            (size,) = struct.unpack(">I", head)
            if size == 0:
                return
            if size > MAX_FRAME_BYTES:
                raise MindVideoError(
                    f"expected a frame length ≤ {MAX_FRAME_BYTES} bytes from {self.label}",
                    f"{size} (frame {count})",
                    "send a 4-byte big-endian length before each payload",
                )
            payload = decode_payload(self._read(size), f"{self.label} frame {count}")
            yield Arrival(count, payload, time.monotonic(), f"{self.label}#{count}")
            count += 1

    def _read(self, size: int, allow_eof: bool = False) -> bytes | None:
        chunks, need = [], size
        while need:
            chunk = self.stream.read(need)
            if not chunk:
                if allow_eof and need == size:
                    return None
                raise MindVideoError(
                    f"expected {size} more bytes of a frame from {self.label}",
                    f"the stream ended after {size - need}",
                    "the sender must write whole frames",
                )
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)


class TcpSource:
    """Framed TRs from one sender connecting to 127.0.0.1:``port`` (bound on creation)."""

    def __init__(self, port: int, max_trs: int | None, connect_timeout_s: float, idle_timeout_s: float):
        self.max_trs, self.connect_timeout_s, self.idle_timeout_s = max_trs, connect_timeout_s, idle_timeout_s
        self._server: socket.socket | None = bind_localhost(port, "the TCP source")
        self.port = self._server.getsockname()[1]
        self._conn: socket.socket | None = None

    def close(self) -> None:
        for sock in (self._conn, self._server):
            if sock is not None:
                sock.close()
        self._conn = self._server = None

    def __iter__(self) -> Iterator[Arrival]:
        assert self._server is not None, "closed"
        self._server.settimeout(self.connect_timeout_s)
        try:
            self._conn, peer = self._server.accept()
        except TimeoutError:
            raise MindVideoError(
                f"expected a sender to connect to 127.0.0.1:{self.port} within {self.connect_timeout_s:g} s",
                "no connection",
                "start the sender, or raise --connect-timeout",
            ) from None
        log.info("TCP source: sender %s:%d connected", *peer)
        self._conn.settimeout(self.idle_timeout_s)
        with self._conn.makefile("rb") as stream:
            try:
                yield from StreamSource(stream, self.max_trs, "tcp")
            except TimeoutError:
                log.warning("TCP source: no data for %.1f s: ending the scan", self.idle_timeout_s)
