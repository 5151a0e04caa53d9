"""The stream sources on their own: the folder watcher (TR order, reorder window, --settle, unreadable and missing
files as faults, true arrival times) and the framed TCP/stdin sources (one scanner per session, reconnects, truncated
frames and garbage framing as faults). Real files in tmp folders, real sockets on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import io
import logging
import random
import socket
import struct
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mindvideo.engine.sources import FolderSource, StreamSource, TcpSource, encode_frame, open_source, tr_number
from mindvideo.errors import MindVideoError

LOGGER = "mindvideo.engine.sources"
SHAPE = (4, 3, 2)


def _folder(path: Path, **options) -> FolderSource:
    options = {"idle_timeout_s": 0.6, "poll_s": 0.01, "corrupt_s": 0.3, "reorder_s": 0.3} | options
    return FolderSource(path, options.pop("max_trs", None), **options)


def _nifti_bytes(t: int) -> bytes:
    return nib.Nifti1Image(np.full(SHAPE, t, np.float32), np.eye(4)).to_bytes()


def _value(arrival) -> float:
    payload = arrival.payload
    return float(np.asarray(payload.dataobj if hasattr(payload, "dataobj") else payload).flat[0])


def _background(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_tr_number_is_the_last_number_in_the_name():
    assert tr_number("run2_vol_0007.nii.gz") == 7 and tr_number("sub-01_0012_Atlas.dtseries.nii") == 12
    assert tr_number("vol_10.npy") == 10 and tr_number("scan.nii") is None


# --------------------------------------------------------------------------------------------------- folder


def test_folder_reorders_within_the_window_and_fills_missing_trs(tmp_path, caplog):
    """vol_1 before vol_0 and vol_3 before vol_2 are put in place; TR 4 never comes in time → a missing fault, and
    its late file is skipped; a second file for TR 6 is a duplicate. The timeline keeps one position per TR."""
    source = _folder(tmp_path, reorder_s=0.5)
    for t in (1, 0):
        np.save(tmp_path / f"vol_{t}.npy", np.full(3, t, np.float32))
    items = iter(source)
    got = [next(items), next(items)]
    np.save(tmp_path / "vol_3.npy", np.full(3, 3, np.float32))
    time.sleep(0.1)  # within the 0.5 s window
    np.save(tmp_path / "vol_2.npy", np.full(3, 2, np.float32))
    got += [next(items), next(items)]
    np.save(tmp_path / "vol_5.npy", np.full(3, 5, np.float32))  # no vol_4
    started = time.monotonic()
    got.append(next(items))
    waited = time.monotonic() - started
    got.append(next(items))
    np.save(tmp_path / "vol_4.npy", np.full(3, 4, np.float32))  # too late now
    np.save(tmp_path / "vol_6.npy", np.full(3, 6, np.float32))
    got.append(next(items))
    (tmp_path / "vol_6.txt").write_text("not a TR file: ignored")
    (tmp_path / "run_6.npy").write_bytes((tmp_path / "vol_6.npy").read_bytes())  # TR 6 again
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert list(items) == []  # ends after the idle timeout
    assert [a.index for a in got] == list(range(7)) and [a.tr for a in got] == list(range(7))
    assert [a.fault is None for a in got] == [True, True, True, True, False, True, True]
    assert got[4].payload is None and got[4].fault.startswith("missing: no file for TR 4 within the reorder window")
    assert waited >= 0.45  # the window was waited for
    assert [_value(a) for a in got if a.fault is None] == [0, 1, 2, 3, 5, 6]
    assert source.events["missing"] == 1 and source.events["late"] == 1 and source.events["duplicates"] == 1
    assert source.events["out_of_order"] >= 2  # vol_2 after vol_3, vol_4 after vol_5 (vol_0/vol_1: one listing)
    assert "skipping vol_4.npy" in caplog.text and "skipping run_6.npy" in caplog.text


def test_folder_takes_every_file_written_in_bursts_of_three(tmp_path):
    """30 NIfTI files created in groups of 3, 30 ms apart, each group in a shuffled order and each file written
    in two chunks: all 30 are taken, in TR order, none a fault."""
    order = random.Random(0)

    def scanner() -> None:
        for group in range(10):
            for t in order.sample(range(3 * group, 3 * group + 3), 3):
                data = _nifti_bytes(t)
                with open(tmp_path / f"vol_{t:03d}.nii", "wb") as handle:
                    handle.write(data[:200])
                    handle.flush()
                    time.sleep(0.005)
                    handle.write(data[200:])
                time.sleep(0.03)
            time.sleep(0.1)

    writer = _background(scanner)
    got = list(_folder(tmp_path, max_trs=30))
    writer.join(10)
    assert [a.tr for a in got] == list(range(30)) and [a.fault for a in got] == [None] * 30
    assert [_value(a) for a in got] == list(range(30))


def test_unreadable_files_become_faults_not_the_end(tmp_path, caplog):
    """A zero-byte file, a NIfTI with a zeroed header, a truncated .nii.gz and a 4-D file each cost one TR."""
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), tmp_path / "vol_0.nii")
    (tmp_path / "vol_1.nii").write_bytes(b"")
    (tmp_path / "vol_2.nii").write_bytes(bytes(348) + _nifti_bytes(2)[348:])
    gz = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), gz)
    (tmp_path / "vol_3.nii.gz").write_bytes(gz.read_bytes()[:-20])
    gz.unlink()
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 2), np.float32), np.eye(4)), tmp_path / "vol_4.nii")
    np.save(tmp_path / "vol_5.npy", np.full(3, 5, np.float32))
    source = _folder(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        got = list(source)
    assert [a.tr for a in got] == list(range(6)) and [a.fault is None for a in got] == [True] + [False] * 4 + [True]
    for arrival in got[1:5]:
        assert arrival.payload is None and arrival.fault.startswith(f"unreadable: {arrival.name}")
    assert "does not parse after 0.3 s at a constant 0 bytes" in got[1].fault and "not one 3-D volume" in got[4].fault
    assert source.events["unreadable"] == 4 and "TR 1 (vol_1.nii): unreadable" in caplog.text


@pytest.mark.parametrize("settle_s", [0.0, 1.2])
def test_settle_covers_a_writer_that_pauses(tmp_path, settle_s):
    """A writer pausing 0.8 s between chunks (longer than the 0.3 s give-up): without --settle the file is a fault,
    with --settle 1.2 (give-up 0.3 + 1.2 s) it is taken whole; a complete file waits for its settle time."""
    data = _nifti_bytes(7)

    def scanner() -> None:
        with open(tmp_path / "vol_0.nii", "wb") as handle:
            handle.write(data[:400])
            handle.flush()
            time.sleep(0.8)
            handle.write(data[400:])

    writer = _background(scanner)
    time.sleep(0.05)
    source = _folder(tmp_path, max_trs=2, settle_s=settle_s, idle_timeout_s=2.0)
    items = iter(source)
    first = next(items)
    writer.join(5)
    written = time.monotonic()
    np.save(tmp_path / "vol_1.npy", np.full(3, 1, np.float32))
    second = next(items)
    if settle_s:
        assert first.fault is None and _value(first) == 7
        assert time.monotonic() - written >= settle_s - 0.05  # parsed at once, taken after settling
    else:
        assert first.fault is not None and "does not parse after 0.3 s" in first.fault
    assert second.fault is None and _value(second) == 1


def test_arrival_is_the_first_sighting_while_the_consumer_is_busy(tmp_path):
    """The watcher keeps listing while generation blocks: the arrival stamp is when the file appeared."""
    np.save(tmp_path / "vol_0.npy", np.zeros(3, np.float32))
    items = iter(_folder(tmp_path, reorder_s=0.0))
    next(items)
    written = time.monotonic()
    np.save(tmp_path / "vol_1.npy", np.ones(3, np.float32))
    time.sleep(0.8)  # the consumer is busy generating
    second = next(items)
    assert second.arrival - written < 0.3 and time.monotonic() - second.arrival >= 0.7


def test_open_source_checks_its_timeouts(tmp_path):
    with pytest.raises(MindVideoError, match="expected --settle ≥ 0 seconds"):
        open_source(f"folder:{tmp_path}", settle_s=-1)
    with pytest.raises(MindVideoError, match="expected --reconnect-timeout ≥ 0"):
        open_source("tcp:127.0.0.1:0", reconnect_timeout_s=float("nan"))


# --------------------------------------------------------------------------------------------------- stdin


def test_stdin_faults_then_ends_on_a_truncated_or_garbage_frame():
    good = encode_frame(np.arange(432, dtype=np.float32))
    short = encode_frame(np.zeros(400, np.float32))  # wrong voxel count: delivered, the stream core rejects it
    bad_npy = struct.pack(">I", 16) + b"\x93NUMPY" + bytes(10)  # framing intact, payload unreadable
    cases = {
        "truncated frame: 400 of 1728 bytes": good + short + bad_npy + good[:404],
        "truncated frame: 2 of 4 header bytes": good + short + bad_npy + good[:2],
        "bad frame length 4294967295": good + short + bad_npy + b"\xff\xff\xff\xff" + good,
    }
    for reason, data in cases.items():
        source = StreamSource(io.BytesIO(data), None, "stdin")
        got = list(source)
        assert [a.index for a in got] == [0, 1, 2, 3] and got[0].payload.shape == (432,)
        assert got[1].payload.shape == (400,) and got[2].fault.startswith("unreadable payload: expected a readable")
        assert got[3].payload is None and got[3].fault.startswith(reason), got[3].fault


# --------------------------------------------------------------------------------------------------- tcp


def _frame(t: int) -> bytes:
    return encode_frame(np.full(8, t, np.float32))


def _tcp(**options) -> TcpSource:
    options = {"connect_timeout_s": 5.0, "idle_timeout_s": 5.0, "reconnect_timeout_s": 3.0} | options
    return TcpSource(0, None, **options)


def _scanner(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5.0)


def test_tcp_refuses_a_second_client_with_a_message(caplog):
    """While the scanner is connected, another client gets one error line and is closed; its TRs are not used."""
    source, got = _tcp(), []
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            reader = _background(lambda: got.extend(source))
            with _scanner(source.port) as scanner:
                scanner.sendall(_frame(0))
                time.sleep(0.1)
                with _scanner(source.port) as intruder:
                    intruder.sendall(_frame(99))
                    reply = intruder.makefile("rb").read()  # until the source closes it
                scanner.sendall(_frame(1) + _frame(2) + encode_frame(None))
                reader.join(10)
    finally:
        source.close()
    assert not reader.is_alive() and [_value(a) for a in got] == [0, 1, 2]
    assert reply.startswith(b"error: ") and b"one per session" in reply and reply.endswith(b"\n")
    assert source.events["refused_clients"] == 1 and "refused a second client" in caplog.text


@pytest.mark.parametrize("break_with", ["truncated", "garbage-length", "random-bytes", "clean-drop"])
def test_tcp_resumes_after_the_scanner_reconnects(break_with, caplog):
    """The scanner drops mid-frame, sends a length that cannot be a frame, sends random bytes, or drops between
    frames: a warning (and a fault for a broken frame), then the reconnected scanner's TRs continue the timeline."""
    garbage = {
        "truncated": _frame(1)[:20],
        "garbage-length": b"\xff\xff\xff\xff" + _frame(1),
        "random-bytes": np.random.default_rng(3).bytes(64),
        "clean-drop": b"",
    }[break_with]
    source = _tcp()
    try:
        items = iter(source)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            with _scanner(source.port) as scanner:
                scanner.sendall(_frame(0) + garbage)
                got = [next(items)]
                if break_with in ("truncated", "clean-drop"):
                    scanner.close()
                if break_with != "clean-drop":
                    got.append(next(items))  # the fault, once the source has given up this connection
            with _scanner(source.port) as scanner:
                scanner.sendall(_frame(2) + encode_frame(None))
                got += list(items)
    finally:
        source.close()
    assert [a.index for a in got] == list(range(len(got))) and _value(got[-1]) == 2 and got[-1].fault is None
    faults = [a.fault for a in got if a.fault]
    expected = {"truncated": "truncated frame: 16 of 32 bytes", "garbage-length": "bad frame length 4294967295"}
    if break_with == "clean-drop":
        assert faults == [] and source.events["disconnects"] == 1
    elif break_with == "random-bytes":
        assert len(faults) == 1 and faults[0].startswith("bad frame length") and source.events["resyncs"] == 1
    else:
        assert len(faults) == 1 and faults[0].startswith(expected[break_with])
    assert source.events["reconnects"] == 1 and "waiting up to 3.0 s for the scanner to reconnect" in caplog.text


def test_tcp_ends_when_nobody_reconnects(caplog):
    source = _tcp(reconnect_timeout_s=0.3)
    try:
        with _scanner(source.port) as scanner:
            scanner.sendall(_frame(0) + _frame(1)[:6])
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            got = list(source)
    finally:
        source.close()
    assert [a.fault is None for a in got] == [True, False] and got[1].fault == "truncated frame: 2 of 32 bytes"
    assert 0.25 <= time.monotonic() - started < 3.0
    assert source.events == {"disconnects": 1, "reconnects": 0, "refused_clients": 0, "resyncs": 0}
    assert "no reconnect within 0.3 s: ending the scan after 2 TRs" in caplog.text
