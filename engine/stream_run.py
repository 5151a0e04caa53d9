"""Driving a stream: TRs from a source through a :class:`~mindvideo.engine.stream.StreamingDecoder` into sinks, and
how a scan ends.

:func:`run_stream` ends a scan in one of three ways; the exit codes are those of ``mindvideo stream``:

* **the source ends** (its end frame, the end of stdin, the idle timeout, ``--max-trs``) → exit 0;
* **a stop signal**: SIGINT, and under :func:`stop_signals` SIGTERM and SIGHUP → exit 0, ``summary["ended"]`` names
  the signal;
* **a fatal condition**: the source fails for good (e.g. gone longer than its reconnect timeout), a bad TR under
  ``on_bad_tr="stop"``, the model fails, every sink fails → :class:`StreamStopped` carrying the summary, exit 3.

In every case the windows already formed are decoded (unless the model itself failed), every sink is finished (a
file sink renames a valid video into place) and the summary is returned or attached. Only when no clip at all was
decoded are the sinks aborted (no output file) and the error raised as is (exit 2). A bad TR is never fatal unless
asked for: the decoder reports it and goes on (see ``on_bad_tr``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mindvideo.errors import MindVideoError

log = logging.getLogger("mindvideo.engine.stream")

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """A stop signal (``signal``: its name) received while the scan runs; handled like Ctrl-C."""

    def __init__(self, name: str = "SIGINT"):
        super().__init__(name)
        self.signal = name


class StreamStopped(MindVideoError):
    """The scan stopped early on a fatal condition. ``summary``: the stats up to then, when clips were written (the
    output is then valid); ``None`` when raised by the decoder itself (``on_bad_tr="stop"``)."""

    summary: dict[str, Any] | None = None


@contextlib.contextmanager
def stop_signals(names: Iterable[str] = STOP_SIGNALS) -> Iterator[Callable[[], None]]:
    """Within the block, the first of these signals raises :class:`Interrupted` in the main thread (the scan then
    finishes like after Ctrl-C); a repeated one is only logged. Yields ``disarm()``: after it every signal is only
    logged (call it once the scan is over, so that finishing the files is never cut short). The previous handlers
    come back on exit. Outside the main thread nothing is installed."""
    state = {"armed": True}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if state["armed"]:
            state["armed"] = False
            raise Interrupted(name)
        log.warning("%s received: already finishing the scan (SIGKILL stops it without writing)", name)

    def disarm() -> None:
        state["armed"] = False

    if threading.current_thread() is not threading.main_thread():
        yield disarm
        return
    wanted = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield disarm
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _sink_name(sink: Any) -> str:
    return type(sink).__name__


class _Sinks:
    """The sinks of one scan: a sink that fails is aborted and left out, the others go on."""

    def __init__(self, sinks: list[Any]):
        self.sinks, self.failed = list(sinks), {}

    def live(self) -> list[Any]:
        return [sink for i, sink in enumerate(self.sinks) if i not in self.failed]

    def _fail(self, sink: Any, exc: BaseException, when: str) -> None:
        self.failed[self.sinks.index(sink)] = f"{_sink_name(sink)}: {exc}"
        log.error("%s failed %s: %s; the other sinks go on", _sink_name(sink), when, exc)
        with contextlib.suppress(Exception):
            sink.abort()

    def write(self, clip: Any) -> None:
        for sink in self.live():
            try:
                sink.write(clip)
            except Exception as exc:
                self._fail(sink, exc, f"at the clip of TR {clip.tr}")
        if self.sinks and not self.live():
            raise StreamStopped("expected at least one working sink", "; ".join(self.failed.values()))

    def event(self, record: dict[str, Any]) -> None:
        for sink in self.live():
            hook = getattr(sink, "event", None)
            if hook is not None:
                try:
                    hook(record)
                except Exception as exc:  # a sink must not raise from event; never let it stop the scan
                    log.error("%s.event failed: %s", _sink_name(sink), exc)

    def close(self, summary: dict[str, Any]) -> None:
        for sink in self.live():
            try:
                sink.close(summary)
            except Exception as exc:
                self._fail(sink, exc, "at the end of the scan")

    def abort(self) -> None:
        for sink in self.live():
            with contextlib.suppress(Exception):
                sink.abort()


def _read(decoder: Any, source: Iterable[Any], model_space: bool) -> tuple[str, BaseException | None]:
    """Submit every TR of ``source``; returns how the scan ended and the fatal error, if any."""
    try:
        for item in source:
            fault, tr = getattr(item, "fault", None), getattr(item, "tr", None)
            decoder.submit(item.payload, arrival=item.arrival, model_space=model_space, fault=fault, tr=tr)
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal", "SIGINT")
        log.warning("%s: finishing the %d TRs received so far", name, decoder.stats()["trs_in"])
        return name, None
    except Exception as exc:  # the source failed for good, a bad TR under stop, the worker failed
        if not isinstance(exc, MindVideoError):
            log.error("the scan stops on an unexpected error", exc_info=exc)
        log.error("the scan stops after %d TRs: %s", decoder.stats()["trs_in"], exc)
        return "error", exc
    return "source", None


def run_stream(
    decoder: Any,
    source: Iterable[Any],
    sinks: list[Any],
    *,
    model_space: bool = False,
    close_timeout: float | None = None,
    on_scan_end: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Drive ``source`` (items with ``payload``, ``arrival`` and optionally ``tr`` / ``fault``, see
    :mod:`mindvideo.engine.sources`) through the decoder's threaded mode into ``sinks``; returns
    :meth:`~mindvideo.engine.stream.StreamingDecoder.stats` plus ``ended`` ("source", a signal name or "error"),
    ``source`` (the source's ``events`` counters, when it has them), ``error`` and ``failed_sinks`` when set.

    See the module docstring for how a scan ends; ``on_scan_end()`` is called as soon as no more TRs are read (the
    CLI disarms its signal handlers there). A sink failing during the scan is aborted and left out; the others go
    on. Raises :class:`StreamStopped` (summary attached, outputs finished) on a fatal condition.
    """
    out = _Sinks(sinks)
    decoder.start(on_clip=out.write, on_event=out.event)
    try:
        try:
            ended, fatal = _read(decoder, source, model_space)
        finally:
            if on_scan_end is not None:
                on_scan_end()
            getattr(source, "close", lambda: None)()
        try:
            decoder.close(timeout=close_timeout)
        except Exception as exc:  # the worker failed (the model, every sink) or did not finish in time
            log.error("the decoder stopped: %s", exc)
            ended, fatal = "error", fatal or exc
            decoder.abort()
        summary = _summary(decoder, source, ended, fatal, out)
        if summary["processed"] == 0:
            out.abort()
            if fatal is not None:
                raise fatal
            raise MindVideoError(
                "expected at least one decoded TR", f"{summary['trs_in']} TRs received", "check the source"
            )
        out.close(summary)
    except BaseException:
        decoder.abort()
        out.abort()
        raise
    if out.failed:
        summary["failed_sinks"] = list(out.failed.values())
    if fatal is not None:
        stopped = StreamStopped(
            f"stopped the scan after {summary['trs_in']} TRs: {fatal}",
            None,
            f"the {summary['processed']} clips made so far and the stats are written",
        )
        stopped.summary = summary
        raise stopped from fatal
    return summary


def _summary(decoder: Any, source: Any, ended: str, fatal: BaseException | None, sinks: _Sinks) -> dict[str, Any]:
    summary = decoder.stats()
    summary["ended"] = ended
    events = getattr(source, "events", None)
    if isinstance(events, dict):
        summary["source"] = dict(events)
    if fatal is not None:
        summary["error"] = str(fatal)
    if sinks.failed:
        summary["failed_sinks"] = list(sinks.failed.values())
    return summary
