"""Lab Streaming Layer (LSL) in and out of ``mindvideo stream``: ``--source lsl:NAME`` and ``--sink lsl:NAME``.

Needs ``pip install -e ".[lsl]"`` (pylsl, which bundles liblsl). Nothing here imports pylsl at module level: the
CLI imports this module only for an ``lsl:`` source or sink, and every import of pylsl goes through
:func:`load_pylsl`, which first points liblsl at a configuration file (``LSLAPICFG``).

**Loopback-only configuration.** liblsl reads its configuration once per process, on first use, from the file
named by ``LSLAPICFG`` (else ``./lsl_api.cfg``, ``~/lsl_api/lsl_api.cfg``, ``/etc/lsl_api/lsl_api.cfg``, else its
defaults, which multicast stream queries to the whole site). When ``LSLAPICFG`` is unset, :func:`load_pylsl`
writes :func:`loopback_config` to a private temporary folder and sets ``LSLAPICFG`` to it: machine resolve scope,
IPv6 off, the query address list and the known peers both exactly ``{127.0.0.1}``, multicast TTL 0, multicast
interface and listen address 127.0.0.1, TCP resolve off, a per-process session ID, liblsl's log in a file beside
the configuration (nothing on stderr). It then checks, before any LSL socket exists, that liblsl really loaded
that file (its log says so) and refuses to go on otherwise. A user who sets ``LSLAPICFG`` (a lab-wide
configuration) gets exactly that file instead.

**Source** (``lsl:NAME``): the stream named ``NAME`` of type ``fMRI``, one TR per sample, ``channel_count`` equal to
the checkpoint transform's raw voxel count (checked against the stream's description before the first TR; wrong
type or count is a :class:`MindVideoError`). Latency runs from the sample's LSL timestamp (mapped to this
process's clock with ``time_correction``), not from when it was read.

**Sink** (``lsl:NAME`` or ``lsl:NAME,classifier=DIR``): three outlets (see :class:`LslSink`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.engine.sources_base import Arrival
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

CONFIG_ENV = "LSLAPICFG"
LOOPBACK = "127.0.0.1"
FMRI_TYPE = "fMRI"
INSTALL_HINT = 'pip install -e ".[lsl]"'
LINGER_S = 1.0  # after the last sample, keep the outlets open this long for consumers to drain them
SINK_QUEUE = 64  # clips / events waiting for the sink thread; beyond, the oldest is dropped (counted)

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "pylsl": the module, "config": the file liblsl loaded


# --------------------------------------------------------------------------------------------------- config


def loopback_config(session_id: str, log_file: Path, log_level: int = 0) -> str:
    """An ``lsl_api.cfg`` under which liblsl addresses nothing but 127.0.0.1 (see the module docstring and the
    README's LSL section for the source lines each key was checked against). ``log_level`` 0 is liblsl's INFO,
    needed for the "Configuration loaded from" line that :func:`load_pylsl` checks."""
    return "\n".join(
        [
            "; mindvideo: liblsl traffic stays on this machine (loopback only)",
            "[ports]",
            "IPv6 = disable",
            "AllowRandomPorts = 1",
            "[multicast]",
            "ResolveScope = machine",
            f"MachineAddresses = {{{LOOPBACK}}}",
            f"AddressesOverride = {{{LOOPBACK}}}",
            "TTLOverride = 0",
            f"Interfaces = {{{LOOPBACK}}}",
            f"ListenAddress = {LOOPBACK}",
            "[lab]",
            f"KnownPeers = {{{LOOPBACK}}}",
            f"SessionID = {session_id}",
            "ResolveOverTCP = 0",
            "[log]",
            f"level = {int(log_level)}",
            f"file = {log_file}",
            "",
        ]
    )


def write_loopback_config(folder: str | Path, session_id: str | None = None) -> Path:
    """Write :func:`loopback_config` to ``folder/lsl_api.cfg`` (liblsl's log: ``folder/liblsl.log``); returns the
    file. ``session_id``: default a fresh ``mindvideo-<random>`` (only streams of the same session see each other)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lsl_api.cfg"
    session = session_id or f"mindvideo-{uuid.uuid4().hex[:12]}"
    path.write_text(loopback_config(session, folder / "liblsl.log"), encoding="utf-8")
    return path


def config_value(path: Path, key: str) -> str | None:
    """``section.Key`` of an ``lsl_api.cfg`` (liblsl's INI dialect), or None."""
    section = ""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("[") and "]" in line:
            section = line[1 : line.index("]")] + "."
        elif "=" in line:
            name, _, value = line.partition("=")
            if section + name.strip() == key:
                return value.strip()
    return None


def load_pylsl() -> Any:
    """Import pylsl under a known liblsl configuration (see the module docstring); the module, once per process.

    Raises :class:`MindVideoError` when pylsl is missing, when pylsl was imported before (liblsl may already run
    under another configuration), when ``LSLAPICFG`` names an unreadable file, or when liblsl's log shows it did not
    load the configuration file."""
    with _lock:
        if "pylsl" in _loaded:
            return _loaded["pylsl"]
        if "pylsl" in sys.modules:
            raise MindVideoError(
                "expected pylsl to be imported through mindvideo.engine.lsl.load_pylsl (it sets liblsl's config)",
                "pylsl already imported",
                "import mindvideo.engine.lsl first, or set LSLAPICFG before importing pylsl",
            )
        path = _config_path()
        log_file = Path(config_value(path, "log.file") or "") if config_value(path, "log.file") else None
        offset = log_file.stat().st_size if log_file is not None and log_file.exists() else 0
        try:
            import pylsl
        except (ImportError, RuntimeError) as exc:
            raise MindVideoError(
                "expected pylsl for an lsl: source or sink", f"{type(exc).__name__}: {exc}", INSTALL_HINT
            ) from None
        with _quiet_stderr():  # loguru announces its log file on stderr once, before the config silences it
            pylsl.protocol_version()  # liblsl reads its configuration here (no socket is opened)
        if log_file is not None:
            _check_loaded(path, log_file, offset)
        else:
            log.info("liblsl uses %s=%s (no log.file in it to confirm it was loaded)", CONFIG_ENV, path)
        _loaded.update(pylsl=pylsl, config=path)
        return pylsl


def _config_path() -> Path:
    """``LSLAPICFG`` when set (it must be readable: liblsl would fall back to site-wide defaults), else a fresh
    loopback-only file in a private temporary folder (removed at exit), exported as ``LSLAPICFG``."""
    given = os.environ.get(CONFIG_ENV)
    if given:
        path = Path(given)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise MindVideoError(
                f"expected {CONFIG_ENV} to name a readable liblsl configuration file",
                repr(given),
                f"fix the path, or unset {CONFIG_ENV} for mindvideo's loopback-only configuration",
            )
        return path.resolve()
    folder = Path(tempfile.mkdtemp(prefix="mindvideo-lsl-"))
    atexit.register(shutil.rmtree, folder, True)
    path = write_loopback_config(folder)
    os.environ[CONFIG_ENV] = str(path)  # also for child processes
    return path


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a moment (C libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_loaded(path: Path, log_file: Path, offset: int) -> None:
    try:
        with open(log_file, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            text = handle.read()
    except OSError:
        text = ""
    if f"Configuration loaded from {path}" not in text:
        raise MindVideoError(
            f"expected liblsl to load {path} (its log {log_file} says which configuration it loaded)",
            "another configuration or liblsl's defaults (site-wide multicast)",
            "check the file's syntax (liblsl's INI: key = value, bools 0/1); LSL was not started",
        )
    log.info("liblsl configuration: %s", path)


def config_path() -> Path | None:
    """The configuration file liblsl loaded in this process (None before :func:`load_pylsl`)."""
    return _loaded.get("config")


# --------------------------------------------------------------------------------------------------- source


class LslSource:
    """TRs from the LSL stream ``name`` (type fMRI, ``channels`` float channels, one TR per sample).

    Resolved on creation (within ``resolve_timeout_s``; the stream's type and channel count are checked then). A
    reader thread moves each sample out of liblsl as soon as it arrives (liblsl discards what an inlet still holds
    when its outlet goes away). When the outlet disappears, the stream is resolved again for at most
    ``reconnect_timeout_s`` (a restarted sender is picked up; TRs sent while no outlet existed are lost: LSL keeps no
    backlog), else the scan ends; it also ends after ``idle_timeout_s`` without a sample or after ``max_trs`` TRs.
    ``events``: disconnects, reconnects."""

    def __init__(
        self,
        name: str,
        channels: int | None,
        *,
        max_trs: int | None = None,
        resolve_timeout_s: float = 60.0,
        idle_timeout_s: float = 20.0,
        reconnect_timeout_s: float = 10.0,
        poll_s: float = 0.05,
    ):
        self.pylsl = load_pylsl()
        self.name, self.channels, self.max_trs = name, channels, max_trs
        self.idle_timeout_s, self.reconnect_timeout_s, self.poll_s = idle_timeout_s, reconnect_timeout_s, poll_s
        self.events: dict[str, int] = {"disconnects": 0, "reconnects": 0}
        self._correction, self._corrected_at = 0.0, -1e9
        self._items: queue.Queue = queue.Queue()  # (values, monotonic arrival) | None (the stream is over)
        self._stop = threading.Event()
        self._inlet = self._open(resolve_timeout_s)
        self._thread = threading.Thread(target=self._read, name=f"mindvideo-lsl-source-{name}", daemon=True)
        self._thread.start()

    def _open(self, timeout_s: float) -> Any:
        """Resolve, check and open the stream (MindVideoError when it is not there in time or does not fit)."""
        found = self.pylsl.resolve_byprop("name", self.name, minimum=1, timeout=timeout_s)
        if not found:
            raise MindVideoError(
                f"expected an LSL stream named {self.name!r} within {timeout_s:g} s (loopback-only unless "
                f"{CONFIG_ENV} names another configuration)",
                "no such stream",
                "start the outlet first, check the name, or raise --connect-timeout",
            )
        info = next((i for i in found if i.type().lower() == FMRI_TYPE.lower()), found[0])
        check_stream(info.name(), info.type(), info.channel_count(), info.channel_format(), self.channels, self.pylsl)
        inlet = self.pylsl.StreamInlet(info, max_buflen=360, recover=False)
        inlet.open_stream(timeout=timeout_s)
        self._corrected_at = -1e9  # a new sender: ask for its clock offset with its first sample
        log.info("LSL source: %s (%d channels) from %s", info.name(), info.channel_count(), info.hostname())
        return inlet

    def close(self) -> None:
        """Stop the reader thread and close the inlet."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if self._inlet is not None:
            with contextlib.suppress(Exception):
                self._inlet.close_stream()
            self._inlet = None

    def __iter__(self) -> Iterator[Arrival]:
        count = 0
        while self.max_trs is None or count < self.max_trs:
            try:
                item = self._items.get(timeout=self.idle_timeout_s)
            except queue.Empty:
                log.warning(
                    "LSL source: no sample for %.1f s: ending the scan after %d TRs", self.idle_timeout_s, count
                )
                return
            if item is None:
                return
            values, arrival = item
            yield Arrival(count, values, arrival, f"lsl#{count}", tr=count)
            count += 1

    def _read(self) -> None:
        """The reader thread: samples → ``_items`` (with their arrival on this process's clock); reconnects."""
        try:
            while not self._stop.is_set():
                try:
                    values, stamp = self._inlet.pull_sample(timeout=self.poll_s)
                except self.pylsl.util.LostError:
                    if not self._reconnect():
                        return
                    continue
                if values is not None:
                    self._items.put((np.asarray(values, np.float32), self._arrival(stamp)))
        except Exception as exc:  # the scan ends; the reason is logged
            log.error("LSL source: %s: %s", type(exc).__name__, exc)
        finally:
            self._items.put(None)

    def _reconnect(self) -> bool:
        self.events["disconnects"] += 1
        log.warning("LSL source: stream %r lost; resolving it again for %.1f s", self.name, self.reconnect_timeout_s)
        with contextlib.suppress(Exception):
            self._inlet.close_stream()
        deadline = time.monotonic() + self.reconnect_timeout_s
        transient = (self.pylsl.util.LostError, self.pylsl.util.TimeoutError)
        while True:
            try:
                self._inlet = self._open(max(deadline - time.monotonic(), self.poll_s))
                self.events["reconnects"] += 1
                return True
            except transient as exc:
                # the resolver can still list the outlet that just went away: opening it fails at once; retry
                # until the deadline (a stream that is back opens on a later try)
                if time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(self.poll_s)
                    continue
                reason = str(exc)
            except MindVideoError as exc:
                reason = exc.found
            log.warning("LSL source: %r not back within %.1f s (%s): ending the scan", self.name,
                        self.reconnect_timeout_s, reason)  # fmt: skip
            return False

    def _arrival(self, stamp: float) -> float:
        """The sample's LSL timestamp (sender's clock) → this process's ``time.monotonic()``, never in the future."""
        now_lsl, now = self.pylsl.local_clock(), time.monotonic()
        if now - self._corrected_at > 5.0:  # liblsl refreshes its estimate every few seconds; never wait for it
            with contextlib.suppress(Exception):  # none yet (it takes ~0.5 s): the last one, or one clock
                self._correction = self._inlet.time_correction(timeout=0.0)
                self._corrected_at = now
        return min(now, now - (now_lsl - (stamp + self._correction)))


def check_stream(name: str, kind: str, count: int, fmt: int, channels: int | None, pylsl: Any) -> None:
    """An fMRI stream with ``channels`` numeric channels, else :class:`MindVideoError`."""
    if kind.lower() != FMRI_TYPE.lower():
        raise MindVideoError(
            f"expected the LSL stream {name!r} to be of type {FMRI_TYPE}",
            f"type {kind!r}",
            f"publish the TRs as a stream of type {FMRI_TYPE}, or name the right stream",
        )
    if channels is not None and count != channels:
        raise MindVideoError(
            f"expected the LSL stream {name!r} to have {channels} channels (the checkpoint's raw voxel count)",
            f"{count} channels",
            "send one raw TR (the transform's voxels) per sample, or use the matching checkpoint",
        )
    if fmt in (pylsl.cf_string, getattr(pylsl, "cf_undefined", 0)):
        raise MindVideoError(
            f"expected numeric channels in the LSL stream {name!r}", "string channels", "send float32 samples"
        )


# --------------------------------------------------------------------------------------------------- sink


def parse_sink_arg(arg: str) -> tuple[str, Path | None]:
    """``NAME`` or ``NAME,classifier=DIR`` → (name, classifier folder or None)."""
    name, _, rest = arg.partition(",")
    classifier = None
    if rest:
        key, _, value = rest.partition("=")
        if key != "classifier" or not value:
            raise MindVideoError(
                "expected --sink lsl:NAME or lsl:NAME,classifier=DIR", repr(arg), "fix the --sink option"
            )
        classifier = Path(value)
    if not name.strip():
        raise MindVideoError("expected a stream name in --sink lsl:NAME", repr(arg), "e.g. --sink lsl:mindvideo")
    return name, classifier


class WindowTap:
    """Wraps a :class:`~mindvideo.engine.stream.StreamingDecoder`'s ``generate`` to remember the window it was last
    called with: the worker thread generates a clip, then hands it to the sinks, so at ``write(clip)`` the tapped
    window is that clip's. ``lock`` (engine backends) keeps the sink's encoder call off the backend while it
    generates. Other attributes (``reset``) are the wrapped callable's."""

    def __init__(self, inner: Callable[..., np.ndarray], lock: threading.Lock | None):
        self.inner, self.lock = inner, lock
        self.last: np.ndarray | None = None

    def __call__(self, windows: np.ndarray, **kwargs: Any) -> np.ndarray:
        self.last = np.array(windows[0], dtype=np.float32)  # (W, V_model), a copy
        with self.lock or contextlib.nullcontext():
            return self.inner(windows, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_embedder(pipeline: Any, lock: threading.Lock | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """``embed(window (W, V_model)) -> (tokens, dim)`` float32: the fMRI encoder's output for one window (the UNet's
    cross-attention condition), from a :class:`~mindvideo.pipeline.MindVideoPipeline` (its ``fmri_encoder``) or an
    engine runtime (its backend's ``encode``); None for anything else."""
    encoder = getattr(pipeline, "fmri_encoder", None)
    if encoder is not None:
        import torch

        param = next(encoder.parameters())

        def embed(window: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = encoder(torch.from_numpy(window[None]).to(param.device, param.dtype))
            return out[0].float().cpu().numpy()

        return embed
    backend = getattr(pipeline, "backend", None)
    if backend is None or not hasattr(backend, "encode"):
        return None

    def embed_engine(window: np.ndarray) -> np.ndarray:
        with lock or contextlib.nullcontext():
            out = backend.encode(np.ascontiguousarray(window[None]))
        out = out.float().cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)
        return out[0].astype(np.float32)

    return embed_engine


class LslSink:
    """Per-TR results on three LSL outlets (loopback-only unless ``LSLAPICFG`` names another configuration).

    **LSL** (``lsl:NAME`` or ``lsl:NAME,classifier=DIR``), all irregular-rate streams with ``source_id``
    ``mindvideo/NAME/<kind>`` (a consumer's inlet recovers when the stream restarts):

    * ``NAME-markers`` (type ``Markers``, 1 string channel): one JSON object per event — ``{"event": "clip", "tr",
      "latency_s", "generate_s", "frames", "steps", "warm", "degraded", "held"}`` when a clip is out (stamped when it
      was ready), ``{"event": "dropped", "index"}`` and ``{"event": "bad_tr", "index", "tr", "reason", "action"}``
      as they happen, ``{"event": "end", "trs_in", "processed", "dropped", "bad", "lost"}`` at the end of the scan.
    * ``NAME-embedding`` (type ``fMRIEmbedding``, float32): ``1 + tokens·dim`` channels per clip — channel 0 the TR
      index, then the fMRI encoder's output for the clip's window, row-major ``(tokens, dim)`` (the UNet's
      condition: 77·768 for the full model, 16·64 for the demo); stamped with the arrival of the TR that completed
      the window. Needs the pipeline (the CLI passes it).
    * ``NAME-scores`` (type ``Scores``, float32, only with ``classifier=DIR``): ``1 + C`` channels — the TR index,
      then the frame classifier's class probabilities (``mindvideo.eval.classifiers.load_frame_classifier``: a
      pixel classifier or a transformers ViT folder) averaged over the clip's frames; channel labels are the class
      names when the folder has them. Same stamp as the embedding.

    ``write`` only queues (the encoder, classifier and LSL pushes run in the sink's own thread); when that thread
    falls ``SINK_QUEUE`` items behind, the oldest are dropped and counted (``lost``, also in the end marker). LSL
    keeps no backlog: a consumer receives what is pushed after it connected; ``close`` keeps the outlets open
    ``LINGER_S`` seconds after the last push so connected consumers get everything.
    """

    def __init__(self, name: str, *, pipeline: Any = None, decoder: Any = None, classifier: Path | None = None):
        self.pylsl = load_pylsl()
        self.name, self.lost, self.errors = name, 0, 0
        self._tap, self._embed, self._classifier = None, None, None
        if classifier is not None:
            from mindvideo.eval.classifiers import load_frame_classifier

            self._classifier = load_frame_classifier(classifier, progress=False)
        if pipeline is not None and decoder is not None:
            lock = None if hasattr(pipeline, "fmri_encoder") else threading.Lock()
            self._embed = make_embedder(pipeline, lock)
            if self._embed is not None:
                self._tap = decoder.generate = WindowTap(decoder.generate, lock)
        self.outlets = self._outlets(pipeline)
        self._queue: queue.Queue = queue.Queue(maxsize=SINK_QUEUE)
        self._thread = threading.Thread(target=self._run, name=f"mindvideo-lsl-{name}", daemon=True)
        self._thread.start()

    def _outlets(self, pipeline: Any) -> dict[str, Any]:
        p = self.pylsl
        outlets = {"markers": self._outlet("markers", "Markers", 1, p.cf_string, {"format": "json"})}
        if self._embed is not None:
            shape = self._embed(np.zeros((pipeline.window_size, pipeline.num_voxels), np.float32)).shape
            layout = {"channel0": "tr", "tokens": shape[0], "dim": shape[1], "order": "row-major (tokens, dim)"}
            outlets["embedding"] = self._outlet(
                "embedding", "fMRIEmbedding", 1 + int(np.prod(shape)), p.cf_float32, layout
            )
        if self._classifier is not None:
            count = int(self._classifier.num_classes)
            names = getattr(self._classifier, "class_names", None) or [f"class{i}" for i in range(count)]
            outlets["scores"] = self._outlet(
                "scores", "Scores", 1 + count, p.cf_float32, {"channel0": "tr"}, ["tr", *names]
            )
        return outlets

    def _outlet(self, kind: str, stream_type: str, channels: int, fmt: int, desc: dict, labels=None) -> Any:
        info = self.pylsl.StreamInfo(
            f"{self.name}-{kind}",
            stream_type,
            channels,
            self.pylsl.IRREGULAR_RATE,
            fmt,
            f"mindvideo/{self.name}/{kind}",
        )
        node = info.desc().append_child("mindvideo")
        for key, value in desc.items():
            node.append_child_value(key, str(value))
        if labels:
            chans = info.desc().append_child("channels")
            for label in labels:
                chans.append_child("channel").append_child_value("label", str(label))
        return self.pylsl.StreamOutlet(info)

    # ------------------------------------------------------------------------------------------- sink protocol

    def write(self, clip: Any) -> None:
        """Queue one clip (with the window it was generated from)."""
        window = self._tap.last if self._tap is not None else None
        self._put(("clip", clip, window))

    def event(self, record: dict[str, Any]) -> None:
        """Queue a dropped window / bad TR marker; never raises."""
        with contextlib.suppress(Exception):
            self._put(("event", dict(record), None))

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """The end marker, then the outlets stay open ``LINGER_S`` s for consumers to drain them."""
        self._put(("end", summary or {}, None))
        self._put(None)
        self._thread.join(timeout=60.0)
        if any(outlet.have_consumers() for outlet in self.outlets.values()):
            time.sleep(LINGER_S)
        self.outlets = {}
        if self.lost:
            log.warning("LSL sink %s: %d items dropped (its thread fell behind)", self.name, self.lost)

    def abort(self) -> None:
        """Stop the thread and close the outlets now."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=5.0)
        self.outlets = {}

    # ------------------------------------------------------------------------------------------- the thread

    def _put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    old = self._queue.get_nowait()
                    if old is None:  # keep the stop request
                        self._queue.put_nowait(None)
                        return
                    self.lost += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._publish(*item)
            except Exception as exc:  # a consumer problem must not stop the stream
                self.errors += 1
                log.error("LSL sink %s: %s: %s", self.name, type(exc).__name__, exc)

    def _publish(self, kind: str, payload: Any, window: np.ndarray | None) -> None:
        if kind == "clip":
            self._publish_clip(payload, window)
        elif kind == "event":
            record = {"event": payload.pop("type", "event"), **payload}
            stamp = record.pop("time", None)
            self._marker(record, self._lsl_time(stamp) if isinstance(stamp, (int, float)) else None)
        else:
            keys = ("trs_in", "processed", "dropped", "bad")
            self._marker({"event": "end", **{k: payload.get(k) for k in keys}, "lost": self.lost})

    def _publish_clip(self, clip: Any, window: np.ndarray | None) -> None:
        stamp = self._lsl_time(clip.arrival)
        if "embedding" in self.outlets and window is not None:
            values = self._embed(window).ravel()
            self.outlets["embedding"].push_sample(np.concatenate([[clip.tr], values]).astype(np.float32), stamp)
        if "scores" in self.outlets:
            probs = np.asarray(self._classifier(clip.frames), np.float64).mean(axis=0)
            self.outlets["scores"].push_sample(np.concatenate([[clip.tr], probs]).astype(np.float32), stamp)
        record = {
            "event": "clip",
            "tr": int(clip.tr),
            "latency_s": round(clip.ready - clip.arrival, 6),
            "generate_s": round(clip.ready - clip.started, 6),
            "frames": int(clip.frames.shape[0]),
            "steps": clip.settings.get("steps"),
            "warm": bool(clip.warm),
            "degraded": bool(clip.degraded),
            "held": list(getattr(clip, "held", ())),
        }
        self._marker(record, self._lsl_time(clip.ready))

    def _marker(self, record: dict[str, Any], stamp: float | None = None) -> None:
        self.outlets["markers"].push_sample([json.dumps(record, default=str)], stamp or self.pylsl.local_clock())

    def _lsl_time(self, monotonic_s: float) -> float:
        """A ``time.monotonic()`` instant on LSL's clock (``local_clock``)."""
        return self.pylsl.local_clock() - (time.monotonic() - monotonic_s)


def open_lsl_sink(arg: str, *, pipeline: Any = None, decoder: Any = None) -> LslSink:
    """The sink for ``--sink lsl:ARG`` (see :class:`LslSink`)."""
    name, classifier = parse_sink_arg(arg)
    return LslSink(name, pipeline=pipeline, decoder=decoder, classifier=classifier)
