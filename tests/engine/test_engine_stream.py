"""``StreamingDecoder``: clips equal the pipeline on the same windows, the window edge rule, online cleaning against
the offline transform, every input form, the behind-schedule policies (reported), clean thread shutdown, bad input."""

from __future__ import annotations

import logging
import threading
import time

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2
from test_engine_stream_support import CHEAP, SlowGenerate, pipeline, stream_assets

from mindvideo.data import preprocess as pp
from mindvideo.engine.stream import (
    OnlineCleanConfig,
    OnlineCleaner,
    StreamingDecoder,
    calibration_stats,
    pipeline_generator,
)
from mindvideo.errors import MindVideoError


@pytest.fixture(scope="module")
def setup():
    pipe = pipeline()
    run = pipe.transform.load_run(stream_assets().nifti_run)  # (105, V_raw)
    return pipe, pipe.transform, run


def _fixed(transform, run) -> tuple[OnlineCleanConfig, tuple[np.ndarray, np.ndarray]]:
    return OnlineCleanConfig(mode="fixed"), calibration_stats(run)


def _expected_windows(transform, run, stats) -> np.ndarray:
    mean, std = stats
    return transform.windows(transform.project((run - mean) / std))


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


# --------------------------------------------------------------------------------------------------- equality


def test_push_equals_pipeline_on_the_same_windows(setup):
    pipe, transform, run = setup
    clean, stats = _fixed(transform, run)
    generate = pipeline_generator(pipe, CHEAP)
    decoder = StreamingDecoder(generate, transform, clean=clean, clean_stats=stats)
    trs = 8
    pushed = [decoder.push(run[t]) for t in range(trs)]
    assert pushed[0] is None and all(c is not None for c in pushed[1:])  # window (t, t+1): TR t comes with t+1
    clips = [c for c in pushed if c is not None] + decoder.flush()
    windows = _expected_windows(transform, run[:trs], stats)  # the offline windows of these 8 TRs (end clamp)
    assert [c.tr for c in clips] == list(range(trs)) == list(range(len(windows)))
    for clip in clips:
        expected = pipe(windows[clip.tr][None], None, CHEAP, progress=False)[0]
        np.testing.assert_array_equal(np.asarray(clip), expected)
        assert clip.warm and not clip.degraded and clip.latency_s > 0
    stats_out = decoder.stats()
    assert stats_out["processed"] == stats_out["windows"] == trs and stats_out["dropped"] == 0


def test_threaded_block_mode_equals_pipeline(setup):
    pipe, transform, run = setup
    clean, stats = _fixed(transform, run)
    generate = pipeline_generator(pipe, CHEAP)
    decoder = StreamingDecoder(generate, transform, policy="block", clean=clean, clean_stats=stats)
    with decoder.start():
        for t in range(6):
            decoder.submit(run[t])
    windows = _expected_windows(transform, run[:6], stats)
    assert [c.tr for c in decoder.clips] == list(range(6))
    for clip in decoder.clips:
        np.testing.assert_array_equal(clip.frames, pipe(windows[clip.tr][None], None, CHEAP, progress=False)[0])
    assert not any(t.name == "mindvideo-stream-worker" for t in threading.enumerate())


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_window_edge_rule_matches_offline_windows(lag):
    seen: list[np.ndarray] = []

    def recording(windows: np.ndarray) -> np.ndarray:
        seen.append(windows[0].copy())
        return np.zeros((1, 1, 2, 2, 3), np.uint8)

    frames = np.random.default_rng(lag).standard_normal((7, 16)).astype(np.float32)
    decoder = StreamingDecoder(recording, None, window_size=3, lag=lag)
    pushed = [decoder.push(f, model_space=True) for f in frames]
    assert all(c is None for c in pushed[: lag + 2]) and all(c is not None for c in pushed[lag + 2 :])
    clips = [c for c in pushed if c is not None] + decoder.flush()
    expected = pp.sliding_windows(frames, 3, lag)  # (T - lag, 3, V)
    assert [c.tr for c in clips] == list(range(len(expected)))
    np.testing.assert_array_equal(np.stack(seen), expected)


def test_short_scan_flush_clamps():
    decoder = StreamingDecoder(lambda w: np.zeros((1, 1, 2, 2, 3), np.uint8), None, window_size=2)
    assert decoder.push(np.ones(16, np.float32), model_space=True) is None
    assert [c.tr for c in decoder.flush()] == [0]  # one TR: window (0, 0)


# --------------------------------------------------------------------------------------------------- cleaning


def test_online_cleaning_approximates_the_offline_transform(setup):
    _, transform, run = setup
    offline = transform.clean(run)  # whole-run 4th-order detrend + z-score
    cleaner = OnlineCleaner(transform.n_raw, OnlineCleanConfig(warmup=20))
    online = np.stack([cleaner.update(frame)[0] for frame in run])
    raw = np.stack([OnlineCleaner(transform.n_raw, OnlineCleanConfig(mode="none")).update(f)[0] for f in run])
    warm, keep = 20, transform.keep
    r = _corr(online[warm:, keep], offline[warm:, keep])  # per voxel, over time
    rms = float(np.sqrt(np.mean((online[warm:, keep] - offline[warm:, keep]) ** 2)))
    assert np.median(r) > 0.85 and np.percentile(r, 10) > 0.7 and rms < 0.7, (np.median(r), rms)
    model_on, model_off = transform.project(online[warm:]), transform.project(offline[warm:])
    per_tr = _corr(model_on.T, model_off.T)  # spatial pattern of each TR in model space
    per_tr_raw = _corr(transform.project(raw[warm:]).T, model_off.T)
    assert np.median(per_tr) > 0.75 > 0.3 > np.median(per_tr_raw), (np.median(per_tr), np.median(per_tr_raw))
    assert np.isfinite(online).all()
    short = OnlineCleaner(transform.n_raw, OnlineCleanConfig(warmup=3))
    assert [short.update(f)[1] for f in run[:5]] == [False, False, False, True, True]  # the warm flag


def test_frozen_statistics_make_cleaning_a_fixed_affine_map(setup):
    _, transform, run = setup
    cleaner = OnlineCleaner(transform.n_raw, OnlineCleanConfig(freeze_after=30))
    for frame in run[:30]:
        cleaner.update(frame)
    shift, scale = cleaner._hp + cleaner._mu, np.sqrt(cleaner._var)
    out = np.stack([cleaner.update(f)[0] for f in run[30:40]])
    expected = np.where(scale > 1e-6, (run[30:40] - shift) / np.where(scale > 1e-6, scale, 1.0), 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- inputs


def test_every_input_form_gives_the_same_model_frame(setup):
    _, transform, run = setup
    decoder = StreamingDecoder(lambda w: w, transform, clean=OnlineCleanConfig(mode="none"))
    t = 7
    volume = np.zeros(transform.mask.array.shape, np.float32)
    volume[transform.mask.array] = run[t]
    cifti = nib.load(str(stream_assets().cifti_run))
    grayordinates = cifti.header.get_axis(1)
    series = cifti2.SeriesAxis(start=0.0, step=2.0, size=1, unit="second")
    header = cifti2.Cifti2Header.from_axes((series, grayordinates))
    row = cifti2.Cifti2Image(np.asarray(cifti.dataobj[t : t + 1]), header)
    forms = [run[t], volume, volume[..., None], nib.Nifti1Image(volume, transform.mask.affine), row]
    frames = [decoder.model_frame(item)[0] for item in forms]
    for frame in frames[1:]:
        np.testing.assert_allclose(frame, frames[0], rtol=1e-6)
    np.testing.assert_array_equal(decoder.model_frame(frames[0], model_space=True)[0], frames[0])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (np.zeros(5, np.float32), "raw vector or a 3-D volume"),
        (np.zeros((4, 4, 4), np.float32), "mask's grid"),
        (np.zeros((2, 136), np.float32), "raw vector or a 3-D volume"),
        (np.array(["a"] * 136), "numeric"),
    ],
)
def test_bad_frames_raise_under_stop(setup, item, message):
    _, transform, _ = setup
    decoder = StreamingDecoder(lambda w: w, transform, on_bad_tr="stop")
    with pytest.raises(MindVideoError, match=message):
        decoder.push(item)
    with pytest.raises(MindVideoError, match="model-space vector of 48"):
        decoder.push(np.zeros(47, np.float32), model_space=True)


def test_bad_options_raise(setup):
    _, transform, _ = setup

    def plain(windows):
        return windows

    cases = [
        (dict(policy="newest"), "policy among"),
        (dict(policy="lower-steps", steps=8), "taking steps="),
        (dict(policy="skip-frames"), "taking frames="),
        (dict(max_queue=0), "max_queue ≥ 1"),
        (dict(min_steps=0), "min_steps ≥ 1"),
        (dict(clean=OnlineCleanConfig(mode="fixed")), "per-voxel mean and std"),
        (dict(clean=OnlineCleanConfig(mode="sometimes")), "mode in"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MindVideoError, match=message):
            StreamingDecoder(plain, transform, **kwargs)
    with pytest.raises(MindVideoError, match="window_size"):
        StreamingDecoder(plain, None)


# --------------------------------------------------------------------------------------------------- policies


def _feed(decoder: StreamingDecoder, run: np.ndarray, trs: int, cadence_s: float) -> dict:
    """Submit ``trs`` TRs at ``cadence_s`` (a scanner on an accelerated clock), then close."""
    decoder.start()
    for t in range(trs):
        decoder.submit(run[t])
        time.sleep(cadence_s)
    return decoder.close(timeout=60)


def _accounted(decoder: StreamingDecoder, stats: dict) -> None:
    """Every window is either a clip or a reported drop: no TR lost silently."""
    trs = sorted([c.tr for c in decoder.clips] + stats["dropped_trs"])
    assert trs == list(range(stats["windows"])) and stats["processed"] + stats["dropped"] == stats["windows"]


@pytest.mark.parametrize(
    ("policy", "knob", "nominal"),
    [("lower-steps", "steps", 8), ("skip-frames", "frames", 8)],
)
def test_degrading_policies_act_and_report(setup, caplog, policy, knob, nominal):
    pipe, transform, run = setup
    settings = {"frames": 2, "steps": 8} if knob == "steps" else {"frames": 8, "steps": 2}
    slow = SlowGenerate(pipeline_generator(pipe, CHEAP), unit_s=0.008)  # nominal: 16 units = 0.128 s per clip
    decoder = StreamingDecoder(slow, transform, policy=policy, tr=0.04, max_queue=6, **settings, min_frames=2)
    with caplog.at_level(logging.INFO, logger="mindvideo.engine.stream"):
        stats = _feed(decoder, run, 16, cadence_s=0.04)
    used = [c.settings[knob] for c in decoder.clips]
    assert nominal > min(used) >= (2 if knob == "frames" else 1)
    assert stats["degraded"] >= 1 and stats["policy_actions"] >= 1
    assert f"lowering {knob} {nominal} → {nominal // 2}" in caplog.text
    if knob == "frames":
        assert min(c.frames.shape[0] for c in decoder.clips) < 8  # fewer frames were emitted
    assert all(r[knob] == c.settings[knob] for r, c in zip(decoder.records(), decoder.clips))
    _accounted(decoder, stats)


def test_drop_oldest_drops_and_reports(setup, caplog):
    pipe, transform, run = setup
    slow = SlowGenerate(pipeline_generator(pipe, CHEAP), unit_s=0.06)
    decoder = StreamingDecoder(slow, transform, policy="drop-oldest", tr=0.01, frames=1, steps=1)
    with caplog.at_level(logging.WARNING, logger="mindvideo.engine.stream"):
        stats = _feed(decoder, run, 12, cadence_s=0.01)
    assert stats["dropped"] >= 3 and stats["max_queue_depth"] <= 2  # max_queue 1, plus the end-of-scan window
    for tr in stats["dropped_trs"]:
        assert f"dropped TR {tr} " in caplog.text
    _accounted(decoder, stats)
    assert decoder.clips[-1].tr == stats["windows"] - 1  # the end-of-scan window is never dropped


def test_block_policy_loses_nothing(setup):
    pipe, transform, run = setup
    slow = SlowGenerate(pipeline_generator(pipe, CHEAP), unit_s=0.03)
    decoder = StreamingDecoder(slow, transform, policy="block", tr=0.005, max_queue=2, frames=1, steps=1)
    stats = _feed(decoder, run, 10, cadence_s=0.005)
    assert stats["dropped"] == 0 and stats["processed"] == 10
    _accounted(decoder, stats)


# --------------------------------------------------------------------------------------------------- threads


def test_worker_error_reaches_the_producer_and_the_thread_ends(setup):
    _, transform, run = setup
    calls = []

    def failing(windows):
        calls.append(1)
        if len(calls) == 3:
            raise MindVideoError("expected a working backend", "a test failure")
        return np.zeros((1, 1, 2, 2, 3), np.uint8)

    decoder = StreamingDecoder(failing, transform, policy="block").start()
    with pytest.raises(MindVideoError, match="working backend"):
        for t in range(20):
            decoder.submit(run[t])
            time.sleep(0.01)
        decoder.close(timeout=10)
    decoder.abort()
    assert not any(t.name == "mindvideo-stream-worker" for t in threading.enumerate())


def test_close_times_out_on_a_stuck_backend(setup):
    _, transform, run = setup
    release = threading.Event()

    def stuck(windows):
        release.wait(10)
        return np.zeros((1, 1, 2, 2, 3), np.uint8)

    decoder = StreamingDecoder(stuck, transform).start()
    decoder.submit(run[0])
    decoder.submit(run[1])
    try:
        with pytest.raises(TimeoutError):
            decoder.close(timeout=0.2)
    finally:
        release.set()
    time.sleep(0.1)
    assert not any(t.name == "mindvideo-stream-worker" and t.is_alive() for t in threading.enumerate())
