"""The fused guidance + update on host buffers (C and numpy twin): maths, bad inputs, messages, the GIL."""

from __future__ import annotations

import itertools
import sys
import threading
import time

import numpy as np
import pytest
import torch
from engine_testing import c_host_loop

from mindvideo.engine import StepCoefficients, host_loop
from mindvideo.errors import MindVideoError

SHAPE = (2, 4, 3, 8, 8)
KINDS = {  # name -> (coefficients, guided)
    "ddim": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0), True),
    "ddim_eta": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0.3), True),
    "dpmpp_2m": (StepCoefficients(0.52, 0, 0.61, -0.13, 1.4, -0.98, 0), True),
    "euler_unguided": (StepCoefficients(1.0, -0.37, 0, 0, 0, 0, 0), False),
}


def buffers(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape, dtype=np.float32) for k in ("x", "eps_pos", "eps_neg", "state", "noise")}


def reference(b: dict[str, np.ndarray], k: StepCoefficients, g: float, guided: bool) -> tuple[np.ndarray, np.ndarray]:
    """The update written out in float64, for the buffers ``b``."""
    x, pos, neg, state, noise = (b[n].astype(np.float64) for n in ("x", "eps_pos", "eps_neg", "state", "noise"))
    m = neg + g * (pos - neg) if guided else pos
    d = k.p * x + k.q * m
    return k.a * x + k.b * m + k.c * d + k.e * state + k.n * noise, d


@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_update_is_the_formula(sampler, kind):
    k, guided = KINDS[kind]
    b = buffers()
    expected_x, expected_d = reference(b, k, 7.5, guided)
    state_before = b["state"].copy()
    sampler.fused_update(b["x"], b["eps_pos"], b["eps_neg"] if guided else None, 7.5, k, b["state"], b["noise"])
    np.testing.assert_allclose(b["x"], expected_x, rtol=1e-6, atol=1e-6)  # float32 storage, float64 maths
    if k.stateful:
        np.testing.assert_allclose(b["state"], expected_d, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(b["state"], state_before)  # untouched when the step needs no state


def test_aliased_output_and_plain_tuples(sampler):
    b = buffers(1)
    x = b["x"].copy()
    sampler.fused_update(x, x, None, 1.0, (0.5, 0.25, 0, 0, 0, 0, 0))  # eps may be x itself (elementwise)
    np.testing.assert_allclose(x, 0.75 * b["x"], rtol=1e-7)


def _bad(case: str, b: dict[str, np.ndarray]) -> tuple[list, dict]:
    """``(args, kwargs)`` of a fused_update call with one thing wrong."""
    k = StepCoefficients(0.5, 0.1, 0.2, 0.3, 1.0, -1.0, 0.0)
    args, kwargs = [b["x"], b["eps_pos"], b["eps_neg"], 7.5, k], {"state": b["state"]}
    if case == "float64 x":
        args[0] = b["x"].astype(np.float64)
    elif case == "float16 eps_pos":
        args[1] = b["eps_pos"].astype(np.float16)
    elif case == "strided eps_neg":
        args[2] = np.repeat(b["eps_neg"], 2, axis=-1)[..., ::2]
    elif case == "shape eps_neg":
        args[2] = b["eps_neg"][..., :7].copy()
    elif case == "read-only x":
        args[0] = b["x"].copy()
        args[0].flags.writeable = False
    elif case == "torch eps_pos":
        args[1] = torch.from_numpy(b["eps_pos"])
    elif case == "list eps_pos":
        args[1] = b["eps_pos"].tolist()
    elif case == "missing state":
        kwargs = {}
    elif case == "float64 state":
        kwargs = {"state": b["state"].astype(np.float64)}
    elif case == "missing noise":
        args[4] = k._replace(n=0.2)
    elif case == "six coefficients":
        args[4] = tuple(k)[:6]
    return args, kwargs


BAD = {
    "float64 x": "expected x as a C-contiguous float32 array; found buffer format 'd'; pass np.ascontiguousarray",
    "float16 eps_pos": "expected eps_pos as a C-contiguous float32 array; found buffer format 'e'",
    "strided eps_neg": "expected eps_neg as a C-contiguous float32 array; found a non-contiguous view",
    "shape eps_neg": "expected eps_neg of shape \\(2, 4, 3, 8, 8\\); found shape \\(2, 4, 3, 8, 7\\)",
    "read-only x": "expected x as a writable float32 array; found a read-only buffer",
    "torch eps_pos": "expected eps_pos as a C-contiguous float32 array; found Tensor \\(no buffer interface\\)",
    "list eps_pos": "found list \\(no buffer interface\\)",
    "missing state": "expected a state buffer for a multistep step; found state=None",
    "float64 state": "expected state as a C-contiguous float32 array; found buffer format 'd'",
    "missing noise": "expected a noise draw for a stochastic step",
    "six coefficients": "expected 7 step coefficients \\('a', 'b', 'c', 'e', 'p', 'q', 'n'\\); found 6 values",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_clear_errors_and_write_nothing(sampler, case):
    b = buffers(2)
    before = {name: a.copy() for name, a in b.items()}
    args, kwargs = _bad(case, b)
    refs = [sys.getrefcount(a) for a in (*args, *kwargs.values())]
    with pytest.raises(MindVideoError, match=BAD[case]):
        sampler.fused_update(*args, **kwargs)
    for name, a in b.items():
        np.testing.assert_array_equal(a, before[name], err_msg=name)
    assert [sys.getrefcount(a) for a in (*args, *kwargs.values())] == refs  # no view or reference leaked


@pytest.mark.parametrize("case", list(BAD))
def test_c_and_python_say_the_same(case):
    c_host_loop()  # fails under CI when the C loop did not build
    messages = []
    for name in ("c", "python"):
        args, kwargs = _bad(case, buffers(3))
        with pytest.raises(MindVideoError) as info:
            host_loop.IMPLEMENTATIONS[name].fused_update(*args, **kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_update_releases_the_gil(sampler):
    """A second Python thread keeps running while the update works on a large buffer (the GIL is released)."""
    n = 1 << 23  # 32 MB per buffer: long enough to see from another thread
    x, pos, neg = np.ones(n, np.float32), np.full(n, 0.5, np.float32), np.full(n, 0.25, np.float32)
    k = StepCoefficients(0.9, 0.1, 0, 0, 0, 0, 0)
    stamps: list[float] = []
    recording, stop = threading.Event(), threading.Event()

    def spin() -> None:
        while not stop.is_set():
            if recording.is_set():
                stamps.append(time.perf_counter())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # hand the GIL over quickly: only a GIL held through the call stalls the spinner
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        for _ in range(5):  # a busy machine may not schedule the spinner in one window
            stamps.clear()
            recording.set()
            t0 = time.perf_counter()
            sampler.fused_update(x, pos, neg, 7.5, k)
            t1 = time.perf_counter()
            recording.clear()
            seen = [t0] + [s for s in stamps if s < t1] + [t1]
            longest_pause = max(b - a for a, b in itertools.pairwise(seen))  # ≈ t1 − t0 if the GIL was held
            if longest_pause < 0.5 * (t1 - t0):
                break
        else:
            pytest.fail(f"the other thread stalled {1e3 * longest_pause:.0f} ms of a {1e3 * (t1 - t0):.0f} ms update")
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)
    np.testing.assert_allclose(x[:4], 0.9 + 0.1 * (0.25 + 7.5 * 0.25), rtol=1e-6)
