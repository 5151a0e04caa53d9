"""The fused update on torch tensors: the Triton kernel (interpreted on CPU here; compiled on a GPU) against the
torch reference and the numpy twin."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from engine_testing import SCHEDULERS

from mindvideo.engine import StepCoefficients, make_plan
from mindvideo.engine import host_loop_numpy as numpy_twin
from mindvideo.engine.device_update import fused_update_tensor, fused_update_torch
from mindvideo.errors import MindVideoError

SHAPE = (2, 4, 3, 7, 9)  # 1512 elements: a partial last block
CASES = {  # name -> (coefficients, guided, eps dtype)
    "ddim_guided": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0), True, torch.float32),
    "ddim_eta": (StepCoefficients(1.07, -0.11, 0, 0, 0, 0, 0.3), True, torch.float32),
    "dpmpp_2m": (StepCoefficients(0.52, 0, 0.61, -0.13, 1.4, -0.98, 0), True, torch.float32),
    "euler_unguided": (StepCoefficients(1.0, -0.37, 0, 0, 0, 0, 0), False, torch.float32),
    "dpmpp_2m_bf16_eps": (StepCoefficients(0.52, 0, 0.61, -0.13, 1.4, -0.98, 0), True, torch.bfloat16),
}


@pytest.fixture(scope="module")
def device_update_triton():
    """:mod:`mindvideo.engine.device_update_triton`, with its kernel interpreted when there is no GPU."""
    pytest.importorskip("triton")
    with pytest.MonkeyPatch.context() as mp:
        if not torch.cuda.is_available():
            mp.setenv("TRITON_INTERPRET", "1")  # read when @triton.jit runs, i.e. at (re)import
        import mindvideo.engine.device_update_triton as module

        yield importlib.reload(module)


def tensors(eps_dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(SHAPE, generator=gen) for name in ("x", "eps_pos", "eps_neg", "state", "noise")}
    out["eps_pos"], out["eps_neg"] = out["eps_pos"].to(eps_dtype), out["eps_neg"].to(eps_dtype)
    return {name: t.to(device) for name, t in out.items()}


def run(update, case: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    k, guided, dtype = CASES[case]
    t = tensors(dtype, device)
    update(t["x"], t["eps_pos"], t["eps_neg"] if guided else None, 12.5, k, t["state"], t["noise"])
    return t


@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernel_equals_torch_and_numpy(device_update_triton, case):
    kernel = run(device_update_triton.launch_fused_update, case)
    reference = run(fused_update_torch, case)
    k, guided, _ = CASES[case]
    host = {name: t.float().numpy().copy() for name, t in tensors(CASES[case][2]).items()}
    numpy_twin.fused_update(
        host["x"], host["eps_pos"], host["eps_neg"] if guided else None, 12.5, k, host["state"], host["noise"]
    )
    for name in ("x", "state"):
        torch.testing.assert_close(kernel[name], reference[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(reference[name].numpy(), host[name])  # same float64 maths, same rounding


def test_plan_parameter_rows_drive_the_kernel(device_update_triton):
    plan = make_plan(SCHEDULERS["dpmpp_2m"][0](), 5)
    table = device_update_triton.plan_parameters(plan, 7.5, "cpu")
    assert table.shape == (5, 8) and table.dtype == torch.float64
    a, b = tensors(torch.float32), tensors(torch.float32)
    for i in range(plan.num_steps):
        device_update_triton.launch_fused_update(
            a["x"], a["eps_pos"], a["eps_neg"], 7.5, plan.step(i), a["state"], params=table[i]
        )
        fused_update_torch(b["x"], b["eps_pos"], b["eps_neg"], 7.5, plan.step(i), b["state"])
    torch.testing.assert_close(a["x"], b["x"], rtol=1e-6, atol=1e-6)
    with pytest.raises(MindVideoError, match="params as 8 contiguous float64"):
        device_update_triton.launch_fused_update(
            a["x"], a["eps_pos"], None, 1.0, plan.step(0), a["state"], params=table[0].float()
        )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("x half", "expected x as a tensor of dtype torch.float32"),
        ("eps int", "expected eps_pos as a tensor of dtype torch.float32 / torch.float16 / torch.bfloat16"),
        ("eps numpy", "expected eps_pos as a tensor.*found ndarray"),
        ("strided eps", "expected eps_neg contiguous; found a non-contiguous view"),
        ("shape", "expected eps_neg of shape \\(2, 4, 3, 7, 9\\) on cpu; found shape \\(2, 4, 3, 7, 8\\)"),
        ("no state", "expected a state buffer"),
    ],
)
def test_bad_tensors_raise_clear_errors(case, match):
    t = tensors(torch.float32)
    k = CASES["dpmpp_2m"][0]
    if case == "x half":
        t["x"] = t["x"].half()
    elif case == "eps int":
        t["eps_pos"] = t["eps_pos"].int()
    elif case == "eps numpy":
        t["eps_pos"] = t["eps_pos"].numpy()
    elif case == "strided eps":
        t["eps_neg"] = t["eps_neg"].repeat_interleave(2, dim=-1)[..., ::2]
    elif case == "shape":
        t["eps_neg"] = t["eps_neg"][..., :8].contiguous()
    elif case == "no state":
        t["state"] = None
    x = t["x"].clone()
    with pytest.raises(MindVideoError, match=match):
        fused_update_torch(t["x"], t["eps_pos"], t["eps_neg"], 7.5, k, t["state"])
    torch.testing.assert_close(t["x"], x)


def test_cpu_tensors_use_torch_and_import_never_loads_triton():
    a, b = tensors(torch.float32), tensors(torch.float32)
    fused_update_tensor(a["x"], a["eps_pos"], a["eps_neg"], 7.5, CASES["ddim_guided"][0])
    fused_update_torch(b["x"], b["eps_pos"], b["eps_neg"], 7.5, CASES["ddim_guided"][0])
    torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=0)
    code = "import sys, mindvideo.engine, mindvideo.engine.device_update; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernel_on_gpu(device_update_triton, case):
    kernel = run(device_update_triton.launch_fused_update, case, "cuda")
    reference = run(fused_update_torch, case, "cuda")
    for name in ("x", "state"):
        torch.testing.assert_close(kernel[name], reference[name], rtol=1e-6, atol=1e-6)
