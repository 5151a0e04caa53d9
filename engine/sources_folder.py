"""The ``folder:DIR`` source of ``mindvideo stream``: per-TR files as a real-time scanner export writes them.

A watcher thread lists the folder every ``poll_s`` and stamps each file's first sighting (the TR's arrival time)
and size, also while generation blocks the consumer; the iterator takes the files in TR-number order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.engine.sources_base import Arrival, fault_arrival, log
from mindvideo.errors import MindVideoError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".lock", ".crdownload", ".swp")
TR_SUFFIXES = (".dtseries.nii", ".nii.gz", ".nii", ".npy", *DICOM_SUFFIXES)
MAX_GAP = 64  # a jump of more TR numbers than this is a new numbering, not missing TRs
RELIST_S = 0.25  # between changes of the folder itself only the files being written are looked at; a full listing
# at least this often covers file systems whose folder timestamps are coarse
WAIT = object()  # a file not ready yet


class NotReady(Exception):
    """A per-TR file that does not parse (yet)."""


class Unreadable(Exception):
    """A per-TR file that parses but is not one TR (it will not get better by waiting)."""


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


def tr_number(name: str) -> int | None:
    """The TR number of a per-TR file: the last number in its name (``run2_vol_0007.nii.gz`` → 7)."""
    stem = name.lower()
    for suffix in TR_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    numbers = re.findall(r"\d+", stem)
    return int(numbers[-1]) if numbers else None


def read_tr_file(path: Path) -> Any:
    """One per-TR file's payload; raises :class:`NotReady` while it does not parse, :class:`Unreadable` when it
    parses but is not one TR, :class:`MindVideoError` when it needs a reader that is not installed."""
    kind = tr_file_kind(path.name)
    if kind == "dicom":
        return read_dicom(path)
    try:
        if kind == "npy":
            return np.load(path, allow_pickle=False)
        return _read_nifti(path, kind)
    except (MindVideoError, NotReady, Unreadable):
        raise
    except Exception as exc:  # truncated gzip, short data, a header still being written (or zeroed)
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
        raise Unreadable(f"not one 3-D volume: shape {data.shape}")
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
        raise Unreadable(f"not a 3-D DICOM volume (multi-frame or mosaic): pixel array {pixels.shape}")
    return np.ascontiguousarray(pixels.transpose(2, 1, 0))  # (slices, rows, cols) → (cols, rows, slices)


@dataclasses.dataclass
class _Seen:
    """A per-TR file the watcher has listed and the timeline has not used yet."""

    name: str
    tr: int
    first_seen: float  # time.monotonic() of the first listing that showed it: the TR's arrival
    signature: tuple[int, int] = (-1, -1)  # (size, mtime_ns) at the last listing
    stable_since: float = 0.0  # since when the signature has not changed
    failed: tuple[int, int] | None = None  # the signature at which it last failed to parse
    reason: str = ""


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


class FolderWatcher:
    """A daemon thread listing ``folder`` every ``poll_s``: first sightings, sizes, out-of-order arrivals."""

    def __init__(self, folder: Path, poll_s: float, events: dict[str, int]):
        self.folder, self.poll_s, self.events = folder, poll_s, events
        self.lock = threading.Lock()
        self.pending: dict[str, _Seen] = {}
        self.done: set[str] = set()  # taken, dropped or ignored names (~100 bytes each)
        self.last_sighting = time.monotonic()
        self._max_tr: int | None = None
        self._failing = False
        self._folder_key: tuple[int, int, int] | None = None
        self._listed_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mindvideo-folder-watcher", daemon=True)

    def start(self) -> None:
        self.scan()  # files already there are seen before the first TR is asked for
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def finish(self, seen: _Seen) -> None:
        """``seen`` is used (or dropped): forget it and never list it again."""
        with self.lock:
            self.pending.pop(seen.name, None)
            self.done.add(seen.name)

    def count(self, key: str) -> None:
        with self.lock:
            self.events[key] = self.events.get(key, 0) + 1

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.scan()

    def _list(self) -> dict[str, tuple[int, int]] | None:
        """``{name: (size, mtime_ns)}`` of the per-TR files not used yet; None when the folder cannot be read."""
        try:
            if not self._folder_changed():  # a big folder costs ms to list: then only the pending files
                return self._stat_pending()
            with os.scandir(self.folder) as entries:
                names = [e for e in entries if e.name not in self.done and tr_file_kind(e.name)]
                listed = {}
                for entry in names:
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # renamed or removed between listing and stat
                        continue
                    if stat.S_ISREG(st.st_mode):
                        listed[entry.name] = _signature(st)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot list the watched folder %s (%s): retrying", self.folder, exc.strerror or exc)
            self._failing, self._folder_key = True, None
            return None
        self._failing = False
        return listed

    def _stat_pending(self) -> dict[str, tuple[int, int]]:
        listed = {}
        for name in list(self.pending):
            try:
                listed[name] = _signature(os.stat(self.folder / name))
            except FileNotFoundError:  # renamed or removed (the next full listing confirms it)
                continue
        return listed

    def _folder_changed(self) -> bool:
        """Whether the folder's entries may have changed since the last full listing (or that is RELIST_S old)."""
        st, now = os.stat(self.folder), time.monotonic()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._folder_key and now - self._listed_at < RELIST_S:
            return False
        self._folder_key, self._listed_at = key, now
        return True

    def scan(self) -> None:
        listed = self._list()
        if listed is None:
            return
        now = time.monotonic()
        with self.lock:
            for gone in set(self.pending).difference(listed):  # renamed or removed before it was used
                del self.pending[gone]
            new = []
            for name, signature in listed.items():
                seen = self.pending.get(name)
                if seen is None and name not in self.done:
                    seen = self._sighted(name, now)
                    new.append(seen)
                if seen is not None and signature != seen.signature:
                    seen.signature, seen.stable_since = signature, now
            new = [seen for seen in new if seen is not None]
            if new:
                self.last_sighting = now
                late = sum(1 for seen in new if self._max_tr is not None and seen.tr < self._max_tr)
                self.events["out_of_order"] += late
                self._max_tr = max([seen.tr for seen in new] + ([self._max_tr] if self._max_tr is not None else []))

    def _sighted(self, name: str, now: float) -> _Seen | None:
        tr = tr_number(name)
        if tr is None:
            log.warning("ignoring %s in the watched folder: no TR number in its name", name)
            self.done.add(name)
            return None
        seen = self.pending[name] = _Seen(name, tr, now)
        return seen


class FolderSource:
    """Per-TR files appearing in ``folder``, one :class:`Arrival` per TR number (faults included).

    **Folder** (``folder:DIR``): per-TR files as real-time scanner exports write them — 3-D NIfTI (``.nii``,
    ``.nii.gz``), one-row CIFTI (``.dtseries.nii``), ``.npy`` vectors/volumes, DICOM (``.dcm``/``.ima``, read with
    pydicom only if it is installed). The TR number is the last number in the file name; files are taken in TR
    order. A file is taken once it parses completely (an uncompressed NIfTI must hold the bytes its header
    promises, a gzip stream must end, an ``.npy`` must hold its shape) and its size has not changed for
    ``settle_s``; one that still does not parse after ``corrupt_s + settle_s`` at a constant size becomes a fault.
    A file arriving after a higher TR number is put in its place if it comes within ``reorder_s`` (the reorder
    window); a TR with no file by then becomes a ``missing`` fault, and its file, should it come later, is skipped.
    The first TR is the lowest number seen within ``reorder_s`` of the first file. Hidden, ``.tmp``/``.part`` and
    unnumbered files are ignored. The scan ends after ``max_trs`` TRs or ``idle_timeout_s`` without a new file.
    """

    def __init__(
        self,
        folder: Path,
        max_trs: int | None,
        idle_timeout_s: float,
        poll_s: float = 0.02,
        corrupt_s: float = 2.0,
        *,
        settle_s: float = 0.0,
        reorder_s: float = 1.0,
    ):
        self.folder, self.max_trs, self.idle_timeout_s = Path(folder), max_trs, idle_timeout_s
        self.poll_s, self.settle_s, self.reorder_s = poll_s, settle_s, reorder_s
        self.give_up_s = corrupt_s + settle_s
        self.events = dict.fromkeys(("out_of_order", "late", "duplicates", "missing", "unreadable"), 0)
        self._watcher = FolderWatcher(self.folder, poll_s, self.events)
        self._taken: set[int] = set()  # TR numbers used (~30 bytes each)

    def close(self) -> None:
        """Stops the watcher thread (the folder is only read)."""
        self._watcher.stop()

    def __iter__(self) -> Iterator[Arrival]:
        self._watcher.start()
        try:
            yield from self._timeline()
        finally:
            self._watcher.stop()

    def _timeline(self) -> Iterator[Arrival]:
        count, nxt, last = 0, None, time.monotonic()
        while self.max_trs is None or count < self.max_trs:
            now = time.monotonic()
            step = self._step(nxt, count, now)
            if isinstance(step, tuple):  # (arrival or None, next TR number)
                item, nxt = step
                if item is not None:
                    yield item
                    count, last = count + 1, time.monotonic()
                continue
            if step is None:  # nothing pending at all
                idle = now - max(last, self._watcher.last_sighting)
                if idle > self.idle_timeout_s:
                    log.warning("no new file in %s for %.1f s: ending the scan after %d TRs", self.folder, idle, count)
                    return
            time.sleep(self.poll_s)

    def _step(self, nxt: int | None, count: int, now: float) -> tuple[Arrival | None, int] | object | None:
        """What to do next: ``(arrival or None, next TR number)``, :data:`WAIT`, or None when nothing is pending."""
        with self._watcher.lock:
            pending = sorted(self._watcher.pending.values(), key=lambda s: (s.tr, s.first_seen))
        for seen in pending:
            if nxt is not None and seen.tr < nxt:
                self._drop(seen, nxt)
        pending = [seen for seen in pending if nxt is None or seen.tr >= nxt]
        if not pending:
            return None
        head, opened = pending[0], min(seen.first_seen for seen in pending)
        if nxt is None:  # the first TR: the lowest number seen within the reorder window
            return WAIT if now - opened < self.reorder_s else (None, head.tr)
        if head.tr == nxt:
            return self._take(head, count, now)
        if now - opened < self.reorder_s:  # a gap: wait for the late file within the window
            return WAIT
        if head.tr - nxt > MAX_GAP:
            log.warning(
                "TR numbers jump from %d to %d in %s: continuing from %d", nxt - 1, head.tr, self.folder, head.tr
            )
            return None, head.tr
        self._watcher.count("missing")
        reason = f"missing: no file for TR {nxt} within the reorder window ({self.reorder_s:g} s)"
        return fault_arrival(count, now, f"TR {nxt}", nxt, reason), nxt + 1

    def _take(self, seen: _Seen, count: int, now: float) -> tuple[Arrival | None, int] | object:
        with self._watcher.lock:
            signature, stable_since = seen.signature, seen.stable_since
        if now - stable_since < self.settle_s:
            return WAIT
        if seen.failed != signature:
            try:
                payload = read_tr_file(self.folder / seen.name)
            except NotReady as exc:
                seen.failed, seen.reason = signature, str(exc)
            except Unreadable as exc:
                return self._unreadable(seen, count, now, str(exc))
            else:
                self._watcher.finish(seen)
                self._taken.add(seen.tr)
                return Arrival(count, payload, seen.first_seen, seen.name, tr=seen.tr), seen.tr + 1
        if now - stable_since < self.give_up_s:
            return WAIT
        waited = f"does not parse after {self.give_up_s:g} s at a constant {signature[0]} bytes"
        return self._unreadable(seen, count, now, f"{waited} ({seen.reason})")

    def _unreadable(self, seen: _Seen, count: int, now: float, why: str) -> tuple[Arrival, int]:
        self._watcher.finish(seen)
        self._taken.add(seen.tr)
        self._watcher.count("unreadable")
        return fault_arrival(count, now, seen.name, seen.tr, f"unreadable: {seen.name} {why}"), seen.tr + 1

    def _drop(self, seen: _Seen, nxt: int) -> None:
        """A file for a TR already used or given up: skipped, said and counted."""
        self._watcher.finish(seen)
        if seen.tr in self._taken:
            self._watcher.count("duplicates")
            log.warning("skipping %s: TR %d was already read from another file", seen.name, seen.tr)
        else:
            self._watcher.count("late")
            log.warning(
                "skipping %s: it came after TR %d was given up (later than the reorder window)", seen.name, seen.tr
            )
