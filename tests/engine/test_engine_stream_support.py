"""Shared set-up for the streaming tests (no tests here): a tiny simulated dataset with NIfTI + CIFTI runs, a
transform fitted on it with the visual-cortex mask, and a tiny random checkpoint holding that transform.

Built once per test process (``functools.cache``) in a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mindvideo.pipeline import GenerationConfig

CHEAP = GenerationConfig(num_frames=2, num_inference_steps=1, height=32, width=32, guidance_scale=3.0)
CHEAP_ARGS = ["--frames", "2", "--steps", "1", "--height", "32", "--width", "32", "--guidance", "3.0"]


@dataclasses.dataclass
class StreamAssets:
    root: Path
    ckpt: Path
    nifti_run: Path  # 4-D NIfTI test run (105 volumes)
    cifti_run: Path  # the same run as CIFTI-2


@functools.cache
def stream_assets() -> StreamAssets:
    from mindvideo.checkpoint import build_random_checkpoint
    from mindvideo.data import FMRITransform, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
    from mindvideo.data.prepare import resolve_loading

    root = Path(tempfile.mkdtemp(prefix="mindvideo-stream-tests-"))
    atexit.register(shutil.rmtree, root, True)
    sim = SimConfig.tiny(
        seed=3, formats=("nifti", "cifti"), train_segments=3, test_segments=1, segment_trs=100, test_repeats=1
    )
    simulate(root / "sim", sim)
    config = PrepareConfig(layout="wen", size=32, video=False, fmri_format="nifti")
    preprocess = preprocess_defaults("wen", select="topk", top_k=40)
    loading = resolve_loading(root / "sim", config)
    prepare(root / "sim", root / "prep", config=config, preprocess=preprocess, loading=loading)
    transform = FMRITransform.load(root / "prep" / "data_transform")
    ckpt = build_random_checkpoint(root / "ckpt", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(root / "prep" / "data_transform", ckpt / "data_transform")
    runs = root / "sim" / "subject1" / "fmri" / "test1"
    return StreamAssets(root, ckpt, runs / "nifti" / "test1_1.nii.gz", runs / "cifti" / "test1_1_Atlas.dtseries.nii")


@functools.cache
def pipeline():
    from mindvideo.pipeline import MindVideoPipeline

    return MindVideoPipeline.from_pretrained(stream_assets().ckpt)


class SlowGenerate:
    """The real pipeline generator, then a sleep so each clip costs ``unit_s × frames × steps`` seconds in all: a
    slower device whose cost scales like the UNet's with frames and steps (not a mock of the decoder)."""

    def __init__(self, inner: Callable[..., np.ndarray], unit_s: float):
        self.inner, self.unit_s = inner, unit_s
        self.calls: list[tuple[int, int]] = []

    def __call__(self, windows: np.ndarray, *, frames: int, steps: int) -> np.ndarray:
        start = time.monotonic()
        out = self.inner(windows, frames=frames, steps=steps)
        time.sleep(max(0.0, self.unit_s * frames * steps - (time.monotonic() - start)))
        self.calls.append((frames, steps))
        return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(port: int, timeout_s: float = 30.0) -> socket.socket:
    """Connect to 127.0.0.1:``port``, retrying every 50 ms for at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Worker(threading.Thread):
    """A thread that keeps its target's exception for the test to re-raise (``join_checked``)."""

    def __init__(self, target: Callable[[], object]):
        super().__init__(daemon=True)
        self._fn, self.error, self.result = target, None, None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # re-raised in the test thread
            self.error = exc

    def join_checked(self, timeout: float = 30.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), "helper thread still running"
        if self.error is not None:
            raise self.error
        return self.result
