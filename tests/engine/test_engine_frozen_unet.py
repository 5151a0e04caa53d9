"""The torch backend's frozen UNet (``TorchBackend(freeze=...)``, :class:`FrozenUNets`): the same function as the
eager module, one trace per input signature, and the eager module when tracing fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.engine.backends import FrozenUNets, TorchBackend
from mindvideo.engine.runtime import Runtime
from mindvideo.errors import MindVideoError
from mindvideo.pipeline import GenerationConfig


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("frozen") / "ckpt", "tiny", num_voxels=64, init_scale=0.02)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_frozen_is_the_cpu_default_and_equals_eager(ckpt):
    frozen, eager = TorchBackend(ckpt), TorchBackend(ckpt, freeze=False)
    assert isinstance(frozen.frozen, FrozenUNets) and eager.frozen is None
    assert frozen.info()["frozen_unet"] and not eager.info()["frozen_unet"]
    rng = np.random.default_rng(0)
    cond = frozen.encode(rng.standard_normal((2, 2, 64)).astype(np.float32))
    for frames in (3, 5):  # two signatures: two traces, each fixed to its own frame count
        for t in (500.0, 10.0):  # the first call of a signature runs the module and traces; the second the trace
            x = rng.standard_normal((2, 4, frames, 8, 8)).astype(np.float32)
            a, b = frozen.denoise(x, t, cond), eager.denoise(x, t, cond)
            print(f"frozen vs eager at {frames} frames, t = {t:g}: max rel {relative(a, b):.2e}")
            assert a.shape == b.shape and relative(a, b) <= 1e-5
    traces = dict(frozen.frozen.traces)
    assert len(traces) == 2 and not frozen.frozen.failed
    for frames in (3, 5):  # each trace is reused, not re-made, for its signature
        frozen.denoise(rng.standard_normal((2, 4, frames, 8, 8)).astype(np.float32), 100.0, cond)
    assert all(frozen.frozen.traces[key] is trace for key, trace in traces.items())


def test_freeze_and_compile_are_refused_together(ckpt):
    with pytest.raises(MindVideoError, match="freeze or compile"):
        TorchBackend(ckpt, freeze=True, compile=True)


def test_the_oldest_trace_goes_beyond_keep():
    module = torch.nn.Linear(4, 4).eval()
    frozen = FrozenUNets(module, keep=2)
    inputs = [torch.randn(n, 4) for n in (1, 2, 3)]
    with torch.inference_mode():
        for x in inputs:
            torch.testing.assert_close(frozen(x), module(x))
        frozen(inputs[1])  # most recent: sizes 3, then 2
    assert [k[0][0] for k in frozen.traces] == [(3, 4), (2, 4)]


class Untraceable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2.0)  # leaves the graph: the trace records the traced call's answer


def test_a_module_that_cannot_be_traced_runs_eagerly_after_one_warning(caplog):
    frozen = FrozenUNets(Untraceable())
    x = torch.arange(4.0)
    with caplog.at_level(logging.WARNING, logger="mindvideo.engine.backends"), torch.inference_mode():
        first, second, third = frozen(x), frozen(x + 1), frozen(x + 2)
    for out, want in ((first, x), (second, x + 1), (third, x + 2)):
        torch.testing.assert_close(out, want * 2)
    warnings = [r.getMessage() for r in caplog.records if "could not be frozen" in r.getMessage()]
    # tracing itself succeeds; the spot check on unseen inputs is what refuses the trace
    assert len(warnings) == 1 and "differs from the module" in warnings[0]
    assert len(frozen.failed) == 1 and not frozen.traces


def test_an_input_the_module_refuses_raises_and_leaves_freezing_on(ckpt):
    backend = TorchBackend(ckpt)
    rng = np.random.default_rng(2)
    cond = backend.encode(rng.standard_normal((1, 2, 64)).astype(np.float32))
    with pytest.raises(RuntimeError):  # 3 latent channels where the UNet takes 4: the module's own error
        backend.denoise(rng.standard_normal((1, 3, 3, 8, 8)).astype(np.float32), 500.0, cond)
    for _ in range(2):
        backend.denoise(rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32), 500.0, cond)
    assert len(backend.frozen.traces) == 1 and not backend.frozen.failed


def test_runtime_video_is_the_same_frozen_or_eager(ckpt):
    cfg = GenerationConfig(num_frames=3, num_inference_steps=3, scheduler="dpm", guidance_scale=7.5)
    fmri = np.random.default_rng(1).standard_normal((1, 2, 64)).astype(np.float32)
    frozen = TorchBackend(ckpt)
    a = Runtime(frozen)(fmri, None, cfg, output="float")
    b = Runtime(TorchBackend(ckpt, freeze=False))(fmri, None, cfg, output="float")
    assert frozen.frozen.traces and not frozen.frozen.failed  # steps 2 and 3 ran the trace
    assert relative(a, b) <= 1e-5
