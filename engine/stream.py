"""Streaming decoder for BCI / real-time fMRI: push one TR at a time, get each TR's clip.

A TR is a raw 3-D NIfTI volume, a CIFTI row or (``model_space=True``) a model-space vector::

    raw frame (V_raw,) ─► FrameGuard ─► OnlineCleaner ─► transform.project ─► window (W, V_model) ─► generate ─► Clip

Every TR is checked (shape, type, finite, plausible: :class:`~mindvideo.engine.stream_input.FrameGuard`) before it
touches any state; a bad one is reported and handled by ``on_bad_tr`` (see :class:`StreamingDecoder`).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mindvideo.engine.stream_input import (
    CLEAN_MODES,
    FrameGuard,
    GuardBounds,
    OnlineCleanConfig,
    OnlineCleaner,
    WindowBuffer,
    WindowJob,
    calibration_stats,
    raw_frame,
)
from mindvideo.engine.stream_policy import DEFAULT_MAX_QUEUE, ON_BAD_TR, POLICIES, Controller, StreamStats
from mindvideo.engine.stream_run import Interrupted, StreamStopped, run_stream, stop_signals
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

__all__ = [
    "CLEAN_MODES",
    "ON_BAD_TR",
    "POLICIES",
    "Clip",
    "FrameGuard",
    "GuardBounds",
    "Interrupted",
    "OnlineCleanConfig",
    "OnlineCleaner",
    "StreamStats",
    "StreamStopped",
    "StreamingDecoder",
    "WindowBuffer",
    "calibration_stats",
    "pipeline_generator",
    "raw_frame",
    "run_stream",
    "stop_signals",
]


Generate = Callable[..., np.ndarray]  # generate(windows (B, W, V) float32[, frames=, steps=]) -> (B, F, H, W, 3) uint8


class Sink(Protocol):
    """Where clips go (see :mod:`mindvideo.engine.sinks`). A sink may also have ``event(record: dict) -> None``,
    called from the producer thread for each bad TR ``{"type": "bad_tr", "index", "tr", "reason", "action",
    "time"}`` and each dropped window ``{"type": "dropped", "index", "time"}`` (``time``: ``time.monotonic()``); it
    must return fast and never raise."""

    def write(self, clip: Clip) -> None: ...
    def close(self, summary: dict[str, Any]) -> None: ...
    def abort(self) -> None: ...


# --------------------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class Clip:
    """One TR's reconstruction. ``np.asarray(clip)`` gives ``frames``."""

    tr: int  # stimulus TR index t (window of fMRI frames t+lag … t+lag+W-1)
    frames: np.ndarray  # (F, H, W, 3) uint8
    arrival: float  # time.monotonic() when the window's completing frame arrived (s)
    started: float  # time.monotonic() when generation started (s)
    ready: float  # time.monotonic() when generation finished (s)
    settings: dict[str, int]  # the frames / steps passed to generate ({} = its defaults)
    warm: bool  # every frame of the window was cleaned after warm-up
    degraded: bool  # made with fewer frames / steps than nominal (policy skip-frames / lower-steps)
    queued: int = 0  # windows still waiting when this one was picked
    held: tuple[int, ...] = ()  # frame (TR) indices of its window that were bad and replaced by the last good TR

    @property
    def latency_s(self) -> float:
        """Arrival → frames ready (s)."""
        return self.ready - self.arrival

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.frames if dtype is None else self.frames.astype(dtype)


# --------------------------------------------------------------------------------------------------- decoder


class StreamingDecoder:
    """Push TRs, get clips: online cleaning → ``transform.project`` → sliding window → ``generate``.

    ``generate(windows (B, W, V_model) float32) -> (B, F, H, W, 3) uint8`` is any backend; it must also take the
    keyword ``frames`` (for ``skip-frames``) / ``steps`` (for ``lower-steps``) — see :func:`pipeline_generator`.
    ``transform``: the checkpoint's fitted :class:`~mindvideo.data.FMRITransform` (``None`` when only model-space
    vectors are pushed; then ``window_size`` is required and ``num_voxels`` = V_model checks them). ``frames`` /
    ``steps``: nominal settings passed to ``generate`` (``None``: its defaults). ``tr``: the scanner's repetition
    time or, under an accelerated clock, the cadence (s): a window waiting longer than this counts as behind
    schedule. ``clean_stats``: per-raw-voxel (mean, std) for ``clean.mode == "fixed"``.

    **Windows** follow the reference rule (:func:`mindvideo.data.preprocess.window_indices`): the clip of stimulus TR
    ``t`` is decoded from fMRI frames ``t+lag … t+lag+W-1``, each clamped to the last frame of the scan. Online, window
    ``t`` is complete when frame ``t+lag+W-1`` arrives, so the first ``lag+W-1`` pushes return ``None``, every later
    push returns the clip of TR ``n-lag-W+1`` (``n`` = index of the frame just pushed), and :meth:`flush` (end of scan)
    emits the last ``W-1`` windows with the end clamp: ``T - lag`` clips in all, the same windows as the offline
    ``transform.windows(...)``. The clip of TR ``t`` therefore comes ``W-1+lag`` TRs after frame ``t`` (the window
    needs them); the *processing* latency recorded here runs from the arrival of the frame that completes the window
    to the frames being out (generated; in threaded mode, also written by every sink).

    **Threaded mode** (:meth:`start` / :meth:`submit` / :meth:`close`): the producer submits TRs at scanner cadence;
    generation runs in a worker thread. When generation falls behind (a window is still queued when the worker picks
    the next one, or it waited longer than one TR), the ``policy`` acts and is reported (a WARNING log line per
    action, counters in :meth:`stats`): ``drop-oldest`` drops the oldest queued windows beyond ``max_queue`` (default
    1: always decode the freshest); ``skip-frames`` / ``lower-steps`` halve the frames / denoising steps per clip down
    to a floor and raise them back once on time; ``block`` never drops (the producer waits; for replays). The others
    keep the queue bounded: a full queue drops its oldest window, logged as such. The last ``W - 1`` windows queued
    by :meth:`close` are always decoded.

    **Bad TRs**: a TR whose payload is malformed (shape, voxel count, type), not finite or implausible
    (:class:`~mindvideo.engine.stream_input.FrameGuard`, bounds ``guard``), or that a source reports as ``fault``,
    never reaches the cleaner or the plausibility history. It is logged once with its reason, listed in
    ``stats()["bad_trs"]`` and handled by ``on_bad_tr``: ``hold`` (default) puts the last good model frame in its
    place (a neutral all-zero cleaned frame before the first good one), so the timeline keeps its length and each clip
    whose window holds it lists it in ``Clip.held``; ``skip`` does the same but decodes no window that holds it
    (``stats()["skipped_trs"]``; a file sink holds its last frame over them); ``stop`` raises :class:`StreamStopped`.
    """

    def __init__(
        self,
        generate: Generate,
        transform: Any = None,
        *,
        window_size: int | None = None,
        num_voxels: int | None = None,
        lag: int | None = None,
        policy: str = "drop-oldest",
        max_queue: int | None = None,
        frames: int | None = None,
        steps: int | None = None,
        min_frames: int = 1,
        min_steps: int = 1,
        tr: float = 2.0,
        clean: OnlineCleanConfig | None = None,
        clean_stats: tuple[np.ndarray, np.ndarray] | None = None,
        recover_after: int = 3,
        on_bad_tr: str = "hold",
        guard: GuardBounds | None = None,
    ):
        self._check_options(generate, transform, window_size, policy, max_queue, frames, steps, tr)
        if on_bad_tr not in ON_BAD_TR:
            raise MindVideoError(f"expected on_bad_tr among {ON_BAD_TR}", repr(on_bad_tr), "pick one")
        if min(min_frames, min_steps) < 1:
            raise MindVideoError("expected min_frames and min_steps ≥ 1", f"{min_frames}, {min_steps}", "raise them")
        self.generate, self.transform, self.policy, self.tr = generate, transform, policy, tr
        self.on_bad_tr, self.guard = on_bad_tr, FrameGuard(guard)
        self.window_size = window_size or transform.window_size
        lag = (transform.preprocess.lag if transform is not None else 0) if lag is None else lag
        self.max_queue = max_queue or DEFAULT_MAX_QUEUE[policy]
        mean, std = clean_stats if clean_stats is not None else (None, None)
        self.cleaner = None if transform is None else OnlineCleaner(transform.n_raw, clean, mean, std)
        self.lag = lag
        self._windows = WindowBuffer(self.window_size, lag)
        self._control = Controller(policy, frames, steps, (min_frames, min_steps), recover_after)
        self._stats = StreamStats(policy)
        self._num_voxels = transform.num_voxels if transform is not None else num_voxels
        self._queue: collections.deque[WindowJob] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._on_clip: Callable[[Clip], None] | None = None
        self._on_event: Callable[[dict[str, Any]], None] | None = None
        self._last_good: np.ndarray | None = None  # the last accepted TR's vector (raw or model-space)
        self._closing = self._aborting = False
        self._error: BaseException | None = None
        self.clips: list[Clip] = []  # threaded mode without on_clip

    @staticmethod
    def _check_options(generate, transform, window_size, policy, max_queue, frames, steps, tr) -> None:
        if policy not in POLICIES:
            raise MindVideoError(f"expected a policy among {POLICIES}", repr(policy), "pick one")
        if transform is None and not window_size:
            raise MindVideoError("expected window_size without a transform", "neither", "pass window_size=")
        small = [v for v in (max_queue, frames, steps) if v is not None and v < 1]
        if small or tr <= 0:
            raise MindVideoError(
                "expected max_queue ≥ 1, tr > 0, frames/steps ≥ 1", f"{max_queue}, {tr}, {frames}/{steps}", "fix them"
            )
        knob = {"skip-frames": ("frames", frames), "lower-steps": ("steps", steps)}.get(policy)
        if knob is not None:
            params = inspect.signature(generate).parameters
            takes = knob[0] in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
            if not takes or knob[1] is None:
                raise MindVideoError(
                    f"expected a generate callable taking {knob[0]}= and a nominal {knob[0]} for policy {policy}",
                    f"{getattr(generate, '__name__', generate)!r} with {knob[0]}={knob[1]}",
                    "wrap the backend with pipeline_generator(), or pick --policy drop-oldest",
                )

    # ------------------------------------------------------------------------------------------- one frame

    def model_frame(self, item: Any, model_space: bool = False) -> tuple[np.ndarray, bool]:
        """One TR → (model-space frame ``(V_model,)`` float32, warm), unchecked (see :func:`raw_frame` for the inputs);
        malformed input raises :class:`MindVideoError`."""
        vector = self._vector(item, model_space)
        if model_space:
            self._num_voxels = vector.shape[0]
            return vector, True
        cleaned, warm = self.cleaner.update(vector)
        return self.transform.project(cleaned), warm

    def _vector(self, item: Any, model_space: bool) -> np.ndarray:
        """The raw ``(V_raw,)`` or model-space ``(V_model,)`` float32 vector of one TR; touches no state."""
        if model_space:
            vector = np.asarray(item)
            expected = self._num_voxels or (vector.shape[0] if vector.ndim == 1 else None)
            if vector.dtype.kind not in "iuf" or expected is None or vector.shape != (expected,):
                raise MindVideoError(
                    f"expected a 1-D model-space vector of {expected or 'V_model'} voxels (the encoder's num_voxels)",
                    f"shape {vector.shape} {vector.dtype}",
                    "send transform.project(...) output, or raw frames without --model-space",
                )
            return vector.astype(np.float32)
        if self.transform is None or self.cleaner is None:
            raise MindVideoError("expected a data transform to read raw frames", "none", "push model_space vectors")
        return raw_frame(item, self.transform)

    def _checked_frame(self, item: Any, model_space: bool) -> tuple[np.ndarray | None, bool, str | None]:
        """(model frame, warm, None) for a good TR, (None, False, reason) for a bad one: only a good TR reaches the
        cleaner and the plausibility history."""
        try:
            vector = self._vector(item, model_space)
        except (MindVideoError, ValueError, TypeError) as exc:
            return None, False, str(exc)
        reason = self.guard.check(vector)
        if reason is not None:
            return None, False, reason
        frame, warm = self.model_frame(vector, model_space)
        self._last_good = vector
        return frame, warm, None

    def _next_job(
        self, item: Any, model_space: bool, arrival: float | None, fault: str | None, tr: int | None
    ) -> WindowJob | None:
        """Check, clean and window one TR; a bad one is reported and replaced per ``on_bad_tr``."""
        arrival = time.monotonic() if arrival is None else arrival
        frame, warm, reason = (None, False, fault) if fault is not None else self._checked_frame(item, model_space)
        if reason is not None:
            frame, warm = self._bad_tr(tr, reason, arrival, model_space), self.cleaner is None or self.cleaner.warm
            if frame is None:  # nothing to stand in for it (model-space vectors of unknown size)
                return None
        job = self._windows.push(frame, warm, arrival, held=reason is not None)
        with self._cond:
            self._stats.trs_in += 1
            self._stats.windows += job is not None
        return job

    def _bad_tr(self, tr: int | None, reason: str, arrival: float, model_space: bool) -> np.ndarray | None:
        """Report a bad TR; raise :class:`StreamStopped` (``stop``) or return the frame standing in for it."""
        index = self._windows.count
        record = {"index": index, "tr": tr, "reason": reason, "action": self.on_bad_tr}
        with self._cond:
            self._stats.bad.append(record)
        where = f"TR {index}" + (f" (scanner TR {tr})" if tr is not None and tr != index else "")
        self._event({"type": "bad_tr", **record, "time": arrival})
        if self.on_bad_tr == "stop":
            log.error("bad %s: %s; stopping the scan (on-bad-tr stop)", where, reason)
            raise StreamStopped(f"expected a good TR at {where} (on-bad-tr stop)", reason, "fix the source")
        then = "holding the last good TR" if self.on_bad_tr == "hold" else "skipping the windows that hold it"
        log.warning("bad %s: %s; %s", where, reason, then)
        if self._last_good is not None:  # as if the scanner repeated its last good TR: the cleaner advances one TR,
            return self.model_frame(self._last_good, model_space)[0]  # as it would have with the real one
        if self.transform is not None and not model_space:
            return self.transform.project(np.zeros(self.transform.n_raw, np.float32))
        return None if self._num_voxels is None else np.zeros(self._num_voxels, np.float32)

    def _event(self, record: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(record)
            except Exception as exc:  # an event hook must never stop the scan
                log.error("event hook failed on %s: %s", record.get("type"), exc)

    def _decodes(self, job: WindowJob) -> bool:
        """False for a window holding a bad TR under ``skip`` (counted)."""
        if not job.held or self.on_bad_tr != "skip":
            return True
        with self._cond:
            self._stats.skipped.append(job.tr)
        log.info("skipped the clip of TR %d: its window holds bad TRs %s", job.tr, list(job.held))
        return False

    # ------------------------------------------------------------------------------------------- synchronous

    def push(
        self,
        item: Any,
        *,
        model_space: bool = False,
        arrival: float | None = None,
        fault: str | None = None,
        tr: int | None = None,
    ) -> Clip | None:
        """Add one TR and, when it completes a window, generate that window's clip now (nominal settings).

        ``arrival``: ``time.monotonic()`` when the TR arrived (default: now); ``fault``: the reason a source could not
        read this TR (``item`` is then ignored); ``tr``: the scanner's TR number, for the report. Returns ``None`` for
        the first ``lag + W - 1`` TRs (and skipped windows). Not available while the worker thread runs (use
        :meth:`submit`).
        """
        self._require_thread(False)
        job = self._next_job(item, model_space, arrival, fault, tr)
        if job is None or not self._decodes(job):
            return None
        clip = self._process(job, 0)
        self._record(clip, clip.ready)
        return clip

    def flush(self) -> list[Clip]:
        """End of scan (synchronous mode): the clips of the last ``W - 1`` windows (end clamp)."""
        self._require_thread(False)
        jobs = self._windows.flush(time.monotonic())
        self._stats.windows += len(jobs)
        clips = [self._process(job, 0) for job in jobs if self._decodes(job)]
        for clip in clips:
            self._record(clip, clip.ready)
        return clips

    def warm_up(self) -> float:
        """One untimed generation on the negative (or a zero) window so that the first TR does not pay for lazy
        initialisation; returns its duration (s)."""
        v = self._num_voxels or 16
        window = self.transform.negative_fmri if self.transform is not None else np.zeros((self.window_size, v))
        start = time.perf_counter()
        self.generate(np.asarray(window, np.float32)[None], **self._control.settings())
        getattr(self.generate, "reset", lambda: None)()  # a warm-starting generate forgets the warm-up clip
        return time.perf_counter() - start

    def _process(self, job: WindowJob, queued: int) -> Clip:
        """Generate one job's clip with the current settings."""
        settings = self._control.settings()
        start = time.monotonic()
        out = np.asarray(self.generate(job.window[None], **settings))
        if out.ndim != 5 or out.shape[0] != 1 or out.dtype != np.uint8 or out.shape[-1] != 3:
            raise TypeError(f"generate must return (1, F, H, W, 3) uint8 frames, got {out.dtype} {out.shape}")
        degraded = self._control.degraded
        ready = time.monotonic()
        return Clip(job.tr, out[0], job.arrival, start, ready, settings, job.warm, degraded, queued, job.held)

    def _record(self, clip: Clip, done: float) -> None:
        """Count a delivered clip; ``done``: when its frames were out (ready, or written by every sink)."""
        generate_s = clip.ready - clip.started
        with self._cond:
            s = self._stats
            s.processed += 1
            s.degraded += clip.degraded
            s.cold += not clip.warm
            knobs = (clip.settings.get("frames", -1), clip.settings.get("steps", -1))
            s.records.append((clip.tr, done - clip.arrival, generate_s, clip.arrival, done, clip.queued, *knobs))
        knobs = ", ".join(f"{k} {v}" for k, v in clip.settings.items()) or f"{clip.frames.shape[0]} frames"
        log.info(
            "TR %d: %s, latency %.3f s (generate %.3f s, %d queued)%s",
            clip.tr,
            knobs,
            done - clip.arrival,
            generate_s,
            clip.queued,
            "" if clip.warm else " [warm-up]",
        )

    # ------------------------------------------------------------------------------------------- threaded

    def start(
        self,
        on_clip: Callable[[Clip], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> StreamingDecoder:
        """Start the worker thread; each clip goes to ``on_clip`` (called in the worker) or to :attr:`clips`; each bad
        TR and dropped window to ``on_event`` (called in the producer; see :class:`Sink`)."""
        self._require_thread(False)
        self._on_clip, self._on_event = on_clip, on_event
        self._thread = threading.Thread(target=self._work, name="mindvideo-stream-worker", daemon=True)
        self._thread.start()
        return self

    def submit(
        self,
        item: Any,
        *,
        model_space: bool = False,
        arrival: float | None = None,
        fault: str | None = None,
        tr: int | None = None,
    ) -> None:
        """Add one TR from the producer (arguments as for :meth:`push`): check, clean and window it now, queue its
        window for the worker. Raises the worker's error, if it stopped on one."""
        self._require_thread(True)
        self._raise_worker_error()
        job = self._next_job(item, model_space, arrival, fault, tr)
        if job is not None and self._decodes(job):
            self._enqueue(job)

    def close(self, timeout: float | None = None) -> dict[str, Any]:
        """End of scan (threaded mode): queue the last ``W - 1`` windows (beyond the queue bound: nothing is behind
        any more), let the worker finish the queue, stop it. Returns :meth:`stats`. Raises the worker's error, or
        :class:`TimeoutError` if it is still busy after ``timeout``."""
        if self._thread is not None:
            jobs = self._windows.flush(time.monotonic())
            with self._cond:
                self._stats.windows += len(jobs)
            jobs = [job for job in jobs if self._decodes(job)]
            with self._cond:  # the scan is over: the last windows are always decoded, never dropped
                self._queue.extend(jobs)
                self._stats.max_queue_depth = max(self._stats.max_queue_depth, len(self._queue))
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.abort(timeout=1.0)
                raise TimeoutError(f"the stream worker did not finish within {timeout} s")
            self._thread = None
            self._raise_worker_error()
        return self.stats()

    def abort(self, timeout: float = 5.0) -> None:
        """Stop the worker now, discarding queued windows (error paths); waits up to ``timeout`` s."""
        with self._cond:
            self._aborting = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the stream worker is still inside generate after %.1f s; leaving it (daemon)", timeout)
            self._thread = None

    def __enter__(self) -> StreamingDecoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def stats(self) -> dict[str, Any]:
        """:meth:`StreamStats.summary` plus the policy settings."""
        with self._cond:
            summary = self._stats.summary()
        return {
            **summary,
            "max_queue": self.max_queue,
            "window_size": self.window_size,
            "lag": self.lag,
            "tr_s": self.tr,
            "on_bad_tr": self.on_bad_tr,
        }

    def records(self) -> list[dict[str, Any]]:
        """Per-TR records, oldest first (the latest :data:`~mindvideo.engine.stream_policy.HISTORY`): tr,
        latency_s, generate_s, queued, the frames / steps used, and the ``time.monotonic()`` stamps ``arrival`` /
        ``done`` (CLOCK_MONOTONIC is system-wide on Linux: comparable across processes)."""
        with self._cond:
            return self._stats.records.to_list()

    def _require_thread(self, running: bool) -> None:
        if (self._thread is not None) != running:
            raise RuntimeError("call start() first" if running else "the worker thread is running: use submit()")

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _enqueue(self, job: WindowJob) -> None:
        """Queue a window, applying the queue bound (block, or drop the oldest: logged, counted and sent as an
        event)."""
        dropped = []
        with self._cond:
            try:
                while self.policy == "block" and len(self._queue) >= self.max_queue and self._error is None:
                    self._cond.wait(timeout=0.5)
            except KeyboardInterrupt:  # a stop signal: this window was received, so it is still decoded
                self._queue.append(job)
                raise
            self._raise_worker_error()
            while len(self._queue) >= self.max_queue:
                old = self._queue.popleft()
                self._stats.dropped.append(old.tr)
                dropped.append(old.tr)
                log.warning(
                    "dropped TR %d after %.3f s in the queue (queue full at max_queue=%d; policy %s)",
                    old.tr,
                    time.monotonic() - old.arrival,
                    self.max_queue,
                    self.policy,
                )
            self._queue.append(job)
            self._stats.max_queue_depth = max(self._stats.max_queue_depth, len(self._queue))
            self._cond.notify_all()
        for tr in dropped:  # outside the lock: a hook must not hold up the worker
            self._event({"type": "dropped", "index": tr, "time": time.monotonic()})

    def _work(self) -> None:
        """The worker: take the oldest queued window, apply the policy, generate, deliver."""
        while True:
            with self._cond:
                while not self._queue and not (self._closing or self._aborting):
                    self._cond.wait()
                if self._aborting or not self._queue:
                    return
                job, queued = self._queue.popleft(), len(self._queue)
                self._cond.notify_all()
            try:
                self._policy_before(job, queued)
                clip = self._process(job, queued)
                (self._on_clip or self.clips.append)(clip)
                self._record(clip, time.monotonic())
                self._policy_after(clip)
            except BaseException as exc:  # delivered to the producer by submit()/close()
                log.error("stream worker stopped at TR %d: %s", job.tr, exc)
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._cond.notify_all()
                return

    def _policy_before(self, job: WindowJob, queued: int) -> None:
        age = time.monotonic() - job.arrival
        behind = queued > 0 or age > self.tr
        message = self._control.before(behind, f"TR {job.tr}: {queued} queued, waited {age:.3f} s")
        if message:
            with self._cond:
                self._stats.policy_actions += 1
            log.warning("%s; policy %s", message, self.policy)

    def _policy_after(self, clip: Clip) -> None:
        message = self._control.after(clip.ready - clip.started, self.tr)
        if message:
            with self._cond:
                self._stats.policy_actions += 1
            log.warning("%s; policy %s", message, self.policy)


def pipeline_generator(pipe: Any, config: Any, warm_start: float | None = None) -> Generate:
    """A :data:`Generate` over a :class:`~mindvideo.pipeline.MindVideoPipeline` and its
    :class:`~mindvideo.pipeline.GenerationConfig`; ``frames`` / ``steps`` override the config per call.

    ``warm_start``: a strength s ∈ (0, 1]: each clip starts from the previous clip's final latents re-noised to
    timestep index ⌊(1 − s)·S⌋ (consecutive windows overlap) and runs only the remaining steps; the first clip, and
    a clip whose latent shape differs from the previous one (``skip-frames``), starts from noise. ``generate.reset()``
    forgets the previous clip."""
    if warm_start is not None and not 0.0 < warm_start <= 1.0:
        raise MindVideoError("expected a warm-start strength in (0, 1]", repr(warm_start), "pass e.g. 0.5")
    previous: list[Any] = []

    def generate(windows: np.ndarray, *, frames: int | None = None, steps: int | None = None) -> np.ndarray:
        cfg = dataclasses.replace(
            config,
            num_frames=frames or config.num_frames,
            num_inference_steps=steps or config.num_inference_steps,
        )
        if warm_start is None:
            return pipe(windows, None, cfg, progress=False)
        last = previous[0] if previous and previous[0].shape[0] == len(windows) else None
        if last is not None and last.shape[2] != cfg.num_frames:
            last = None
        video, latents = pipe(
            windows, None, cfg, progress=False, init_latents=last, strength=warm_start, return_latents=True
        )
        previous[:] = [latents]
        return video

    generate.reset = previous.clear  # type: ignore[attr-defined]
    return generate
