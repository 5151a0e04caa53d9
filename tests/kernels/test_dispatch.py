"""How the registry chooses the Triton backends, and what importing the package may not do."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_cases import HAS_CUDA, requires_triton

from mindvideo import kernels
from mindvideo.errors import MindVideoError
from mindvideo.kernels import cpu, select

OPS = ("sparse_causal_attention", "temporal_attention")
# what CPU fp32 inputs get automatically: the fused C kernels where the extension was built
CPU_AUTO = "cpu" if cpu.available() else "sdpa"


def _sc_args(device="cpu", dtype=torch.float32, d=40):
    q = torch.zeros(6, 2, 16, d, device=device, dtype=dtype)
    return (q, q, q, 3, (-2, -1), None)


def _t_args(device="cpu", dtype=torch.float32, d=40, frames=6):
    q = torch.zeros(8, 2, frames, d, device=device, dtype=dtype)
    return (q, q, q, None)


def test_import_needs_neither_triton_nor_cuda():
    code = (
        "import sys, torch, mindvideo.kernels as k; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'; "
        "print(k.backends('sparse_causal_attention'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "['triton', 'cpu', 'sdpa', 'reference', 'triton-interpret']" in done.stdout


@pytest.mark.parametrize("op", OPS)
def test_backends_best_first(op):
    built_in = ["triton", "cpu", "sdpa", "reference", "triton-interpret"]
    # other packages may add backends (the ONNX export registers its plugin node for the sparse-causal op)
    assert [name for name in kernels.backends(op) if name in built_in] == built_in


def test_forcing_a_backend_for_one_op_leaves_the_other_alone():
    with kernels.use_backend("reference"):
        with kernels.use_backend("sdpa", op="sparse_causal_attention"):
            assert select("sparse_causal_attention", *_sc_args()).name == "sdpa"
            assert select("temporal_attention", *_t_args()).name == "reference"
            with kernels.use_backend(None, op="temporal_attention"):  # automatic again, for that op only
                assert select("temporal_attention", *_t_args()).name == CPU_AUTO
        assert select("sparse_causal_attention", *_sc_args()).name == "reference"
    assert select("sparse_causal_attention", *_sc_args()).name == CPU_AUTO
    with pytest.raises(ValueError, match="unknown attention op"):
        kernels.use_backend("sdpa", op="cross_attention").__enter__()


def test_cpu_never_picks_triton_automatically():
    """Even with TRITON_INTERPRET=1 (set by conftest without a GPU) CPU tensors go to the C kernels or SDPA: the
    interpreter is orders of magnitude slower, so it runs only when named."""
    assert select("sparse_causal_attention", *_sc_args()).name == CPU_AUTO
    assert select("temporal_attention", *_t_args()).name == CPU_AUTO
    assert select("temporal_attention", *_t_args(dtype=torch.float64)).name == "sdpa"


def test_forcing_triton_on_cpu_explains():
    with kernels.use_backend("triton"), pytest.raises(MindVideoError, match="does not accept these inputs"):
        kernels.sparse_causal_attention(*_sc_args()[:3], 3)


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only: the interpreter backend")
@requires_triton
def test_interpreter_backend_only_under_triton_interpret(monkeypatch):
    with kernels.use_backend("triton-interpret"):
        assert select("temporal_attention", *_t_args()).name == "triton-interpret"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(MindVideoError, match="does not accept"):
            select("temporal_attention", *_t_args())


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only: the interpreter backend")
@requires_triton
def test_interpreter_backend_declines_what_the_kernels_cannot_take():
    name = "triton-interpret"
    with kernels.use_backend(name):
        assert select("sparse_causal_attention", *_sc_args()).name == name
        for args in (_sc_args(dtype=torch.float64), _sc_args(d=300)):
            with pytest.raises(MindVideoError):
                select("sparse_causal_attention", *args)
        with pytest.raises(MindVideoError):
            select("temporal_attention", *_t_args(frames=200))


def test_not_chosen_while_exporting(monkeypatch):
    """Traced/exported graphs must hold plain ops: the Triton backends step aside under any trace, the C kernels
    (torch ops a TorchScript trace can hold) inside an ONNX export."""
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    device = "cuda" if HAS_CUDA else "cpu"
    assert select("sparse_causal_attention", *_sc_args(device)).name == "sdpa"
    assert select("temporal_attention", *_t_args(device)).name == "sdpa"
    with kernels.use_backend("triton-interpret"), pytest.raises(MindVideoError):
        select("sparse_causal_attention", *_sc_args())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.gpu
@requires_triton
def test_cuda_picks_triton_when_it_fits():
    assert select("sparse_causal_attention", *_sc_args("cuda", torch.bfloat16)).name == "triton"
    assert select("temporal_attention", *_t_args("cuda", torch.float16)).name == "triton"
    assert select("sparse_causal_attention", *_sc_args("cuda", torch.float64)).name == "sdpa"
    assert select("sparse_causal_attention", *_sc_args("cuda", torch.float32)).name == "sdpa"  # fp32: SDPA
    assert select("temporal_attention", *_t_args("cuda", torch.float16, frames=200)).name == "sdpa"
