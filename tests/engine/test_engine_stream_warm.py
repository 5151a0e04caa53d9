"""Warm start of the stream: each clip from the previous clip's re-noised final latents. Off: bitwise the cold run;
on: the first clip equals the cold run, later clips differ and run fewer UNet evaluations; bad strengths exit 2."""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest
from click.testing import CliRunner
from test_engine_stream_support import CHEAP, CHEAP_ARGS, pipeline, stream_assets

from mindvideo.cli import main
from mindvideo.engine.sinks import read_clips
from mindvideo.engine.sources import encode_frame
from mindvideo.engine.stream import OnlineCleanConfig, StreamingDecoder, calibration_stats, pipeline_generator
from mindvideo.errors import MindVideoError
from mindvideo.sampling import warm_start_index

STEPS = 4
CONFIG = dataclasses.replace(CHEAP, num_inference_steps=STEPS)
TRS = 6


@pytest.fixture(scope="module")
def setup():
    pipe = pipeline()
    return pipe, pipe.transform.load_run(stream_assets().nifti_run)


class Counted:
    """The pipeline's own denoiser, counting its calls (one per UNet evaluation batch)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def __enter__(self) -> Counted:
        self.pipe.denoise, self.inner = self, self.pipe.denoise
        return self

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)

    def __exit__(self, *exc) -> None:
        del self.pipe.denoise  # back to the class method


def _stream(setup, warm_start: float | None, trs: list[int] | None = None) -> tuple[list[np.ndarray], list[int]]:
    """The clips of TRS TRs (synchronous mode, fixed cleaning) and the UNet calls per clip (``trs``: gets the TRs)."""
    pipe, run = setup
    generate = pipeline_generator(pipe, CONFIG, warm_start)
    fixed, stats = OnlineCleanConfig(mode="fixed"), calibration_stats(run)
    decoder = StreamingDecoder(generate, pipe.transform, clean=fixed, clean_stats=stats, steps=STEPS)
    decoder.warm_up()  # a warm-up generation must not count as the previous clip
    clips, calls = [], []
    with Counted(pipe) as counted:
        for t in range(TRS):
            before = counted.calls
            clip = decoder.push(run[t])
            if clip is not None:
                clips.append(clip.frames)
                (trs if trs is not None else []).append(clip.tr)
                calls.append(counted.calls - before)
    return clips, calls


def test_warm_start_off_is_the_cold_run_bitwise(setup):
    pipe, run = setup
    trs: list[int] = []
    cold, calls = _stream(setup, None, trs)
    mean, std = calibration_stats(run)
    windows = pipe.transform.windows(pipe.transform.project((run - mean) / std))  # the offline windows
    for tr, frames in zip(trs, cold, strict=True):
        np.testing.assert_array_equal(frames, pipe(windows[tr][None], None, CONFIG, progress=False)[0])
    assert calls == [STEPS] * len(cold)


def test_warm_start_first_clip_equals_cold_later_clips_run_fewer_steps(setup):
    cold, _ = _stream(setup, None)
    warm, calls = _stream(setup, 0.5)
    assert len(warm) == len(cold) >= 3
    assert np.array_equal(warm[0], cold[0])  # no previous latents: pure noise, as cold
    assert all(not np.array_equal(w, c) for w, c in zip(warm[1:], cold[1:], strict=True))
    assert calls[0] == STEPS and calls[1:] == [STEPS - warm_start_index(STEPS, 0.5)] * (len(warm) - 1)
    assert calls[1] == 2


def test_strength_one_runs_every_step_from_the_noised_previous_latents(setup):
    warm, calls = _stream(setup, 1.0)
    cold, _ = _stream(setup, None)
    assert calls == [STEPS] * len(warm) and np.array_equal(warm[0], cold[0])


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5])
def test_bad_strength_raises(setup, strength):
    with pytest.raises(MindVideoError, match=r"strength in \(0, 1\]"):
        pipeline_generator(setup[0], CONFIG, strength)


def _invoke(*args: object, input: bytes | None = None):
    base = ["stream", "--checkpoint", str(stream_assets().ckpt), *CHEAP_ARGS, "--threads", "1"]
    return CliRunner().invoke(main, [*base, *map(str, args)], input=input)


@pytest.mark.parametrize("strength", ["0", "-0.2", "1.01"])
def test_cli_bad_strength_exits_2_before_loading(tmp_path, strength):
    started, out = time.monotonic(), tmp_path / "out.mp4"
    result = _invoke("--source", "stdin", "--sink", f"file:{out}", "--warm-start", "--warm-start-strength", strength)
    assert result.exit_code == 2 and "--warm-start-strength in (0, 1]" in result.stderr, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [] and time.monotonic() - started < 5


def test_cli_warm_start_streams_and_keeps_the_first_clip(setup):
    _, run = setup
    data = b"".join(encode_frame(run[t]) for t in range(6))
    runs = {}
    for name, extra in (("cold", []), ("warm", ["--warm-start", "--warm-start-strength", "0.5"])):
        result = _invoke(
            "--source", "stdin", "--sink", "stdout", "--policy", "block", "--steps", STEPS, *extra, input=data
        )
        assert result.exit_code == 0, result.stderr
        runs[name] = [frames for header, frames in read_clips(io.BytesIO(result.stdout_bytes)) if "end" not in header]
    assert len(runs["warm"]) == len(runs["cold"]) == 6
    assert np.array_equal(runs["warm"][0], runs["cold"][0])
    assert not np.array_equal(runs["warm"][1], runs["cold"][1])
