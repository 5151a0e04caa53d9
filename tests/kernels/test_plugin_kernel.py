"""The TensorRT plugin variant of the sparse-causal kernel: its calling convention run under the CPU interpreter
against the torch reference, and its ahead-of-time compile for sm_90 (in a subprocess, with the compiler)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import (
    DEVICE,
    HAS_CUDA,
    TOLERANCE,
    poisoned_like,
    rel_err,
    requires_ptxas,
    requires_triton,
    skip_unless_runs,
)

from mindvideo.kernels import aot, plugin_abi
from mindvideo.kernels.reference import FIRST_FRAME, encode_offsets, source_frames, sparse_causal_reference

pytestmark = requires_triton

SCRIPT = Path(__file__).with_name("aot_compile.py")
# (B, F, heads, N, d, offsets). Interpreter tiles are 16 × 16: N = 37, 21 leave partial query and key blocks, 32
# takes the even path; F = 1, 2 clamp every frame, F = 5 also has frames that clamp nothing.
CASES = [
    (2, 1, 2, 37, 40, (-2, -1)),
    (2, 2, 2, 21, 80, (-2, -1)),
    (2, 5, 2, 21, 40, (None, -1)),  # Tune-A-Video: first frame + previous frame
    (2, 2, 2, 32, 40, (None, -1)),
    (2, 5, 1, 37, 40, (-1,)),
    (2, 5, 1, 21, 80, (-3, None, 1)),  # three offsets, a future frame, duplicates at both ends
]


def _inputs(b, f, heads, n, d, dtype, gen):
    return [torch.randn(b, f, heads, n, d, generator=gen).to(device=DEVICE, dtype=dtype) for _ in range(3)]


def _reference(q, k, v, offsets, scale=None):
    """The oracle on the (B·F, heads, N, d) views of the plugin's (B, F, heads, N, d) tensors."""
    flat = (t.flatten(0, 1) for t in (q, k, v))
    return sparse_causal_reference(*flat, q.shape[1], offsets, scale).view(q.shape)


@pytest.mark.parametrize(("b", "f", "heads", "n", "d", "offsets"), CASES)
def test_matches_reference_fp32(b, f, heads, n, d, offsets, gen):
    from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

    q, k, v = _inputs(b, f, heads, n, d, torch.float32, gen)
    out = poisoned_like(q)
    assert sparse_causal_plugin_attention(q, k, v, offsets, out=out) is out
    err = rel_err(out, _reference(q, k, v, offsets))
    assert err <= TOLERANCE[torch.float32], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("f", "offsets"), [(5, (-2, -1)), (2, (None, -1))], ids=["prev2", "first+prev"])
def test_matches_reference_half(dtype, f, offsets, gen):
    skip_unless_runs(dtype)
    from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

    q, k, v = _inputs(2, f, 2, 37, 40, dtype, gen)
    out = sparse_causal_plugin_attention(q, k, v, offsets, out=poisoned_like(q))
    assert out.dtype == dtype
    err = rel_err(out, _reference(q, k, v, offsets))
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e}"


def test_scale_and_default_output(gen):
    from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

    q, k, v = _inputs(2, 2, 2, 19, 40, torch.float32, gen)
    out = sparse_causal_plugin_attention(q, k, v, (-1,), 0.3)
    assert out.shape == q.shape and out.is_contiguous()
    assert rel_err(out, _reference(q, k, v, (-1,), 0.3)) <= TOLERANCE[torch.float32]


def test_launch_follows_the_tensorrt_convention(monkeypatch, gen):
    """Arguments (inputs, int32 F and N, output), constexprs only otherwise, and plugin_grid's 1-D grid."""
    from mindvideo.kernels import sparse_causal

    names = sparse_causal._sparse_causal_plugin_kernel.arg_names
    assert names[:6] == ["Q", "K", "V", "num_frames", "N", "Out"]
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **meta: launches.append((grid, args, meta))

    monkeypatch.setattr(sparse_causal, "_sparse_causal_plugin_kernel", Recorder())
    q, k, v = _inputs(2, 5, 3, 37, 40, torch.float32, gen)
    out = sparse_causal.sparse_causal_plugin_attention(q, k, v, (None, -1), 0.5, config={"BLOCK_M": 16, "BLOCK_N": 16})
    ((grid, args, meta),) = launches
    assert grid == (math.ceil(37 / 16) * 2 * 5 * 3,)
    assert args[:3] == (q, k, v) and args[3:5] == (5, 37) and args[5] is out and len(args) == 6
    assert set(meta) == set(names[6:])  # every other parameter is a constexpr
    assert meta["OFFSETS"] == (FIRST_FRAME, -1) and meta["NUM_HEADS"] == 3 and meta["HEAD_DIM"] == 40
    assert meta["QK_SCALE"] == pytest.approx(0.5 * math.log2(math.e))
    assert meta["EVEN_N"] is False


class _ShapeExpr:
    """A stand-in for TensorRT's symbolic shape expressions: it has ``*`` but neither ``//`` nor ``+``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __mul__(self, other: _ShapeExpr | int) -> _ShapeExpr:
        return _ShapeExpr(self.value * (other.value if isinstance(other, _ShapeExpr) else other))


def test_grid_and_scalars_build_from_shape_expressions():
    shape = (2, 6, 8, 77, 40)

    def cdiv(a, b):
        return _ShapeExpr(-(-a.value // b))

    grid = plugin_abi.plugin_grid(tuple(map(_ShapeExpr, shape)), 64, cdiv)
    assert isinstance(grid, _ShapeExpr) and grid.value == 2 * 6 * 8 * 2
    assert plugin_abi.plugin_grid(shape, 64, lambda a, b: -(-a // b)) == 2 * 6 * 8 * 2
    assert plugin_abi.plugin_scalars(shape) == (6, 77)


def test_encoded_offsets_pick_the_same_frames():
    for offsets in [(-2, -1), (None, -1), (-3, None, 1), (0,)]:
        encoded = encode_offsets(offsets)
        assert all(isinstance(o, int) for o in encoded)
        assert encode_offsets(encoded) == encoded  # a plugin attribute holds encoded offsets; they pass through
        for frames in (1, 2, 5):
            assert torch.equal(source_frames(frames, encoded), source_frames(frames, offsets))
    for bad in [(), (1 << 30,), (FIRST_FRAME - 1,), (True,), ("first", -1)]:
        with pytest.raises(ValueError, match="frame_offsets"):
            encode_offsets(bad)


BAD = [
    (lambda q: (q.flatten(0, 1), q, q), "expected contiguous q shaped (B, F, heads, N, d)"),
    (lambda q: (q, q.transpose(3, 4), q), "expected contiguous k"),
    (lambda q: (q, q, q.reshape(3, 2, *q.shape[2:])), "of one shape"),  # same (B·F) rows, other (B, F)
    (lambda q: (q, q, q.half()), "float16, bfloat16 or float32"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_inputs_say_what_is_wrong(args, message):
    from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

    q = torch.zeros(2, 3, 2, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="sparse_causal_plugin_attention") as info:
        sparse_causal_plugin_attention(*args(q))
    assert message in str(info.value)
    with pytest.raises(ValueError, match="frame_offsets"):
        sparse_causal_plugin_attention(q, q, q, (-(1 << 31),))
    with pytest.raises(ValueError, match="expected a contiguous out"):
        sparse_causal_plugin_attention(q, q, q, out=q.transpose(3, 4))


def test_compile_refuses_the_interpreter_and_bad_arguments(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET is set"):
        aot.compile_sparse_causal_plugin("fp16", 8, 40, (-2, -1), None, even_n=False, arch=90)
    if DEVICE == "cpu":  # conftest imported the kernels under the interpreter: unsetting it now does not undo that
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="imported under TRITON_INTERPRET"):
            aot.compile_sparse_causal_plugin("fp16", 8, 40, (-2, -1), None, even_n=False, arch=90)
    with pytest.raises(ValueError, match="dtype"):
        plugin_abi.plugin_tile("fp8", 40)
    with pytest.raises(ValueError, match="head dim"):
        plugin_abi.plugin_tile("fp16", 320)


def _compiler_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter


@requires_ptxas
def test_plugin_compiles_for_sm90_within_tensorrt_limits():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90", "--plugin"],
        env=_compiler_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert rows, done.stderr[-3000:]
    compiled = {(r["dtype"], r["head_dim"]) for r in rows}
    assert {(t, d) for t in ("fp16", "bf16") for d in (40, 64, 80, 160)} <= compiled
    for row in rows:
        assert row["ok"], row
        assert row["params"] is not None, f"no .entry {row['name']} in the PTX: {row}"
        # TensorRT's order: 3 input pointers, the int32 F and N, the output pointer; then Triton's scratch pointers
        assert row["params"][:6] == ["u64", "u64", "u64", "u32", "u32", "u64"], row
        assert all(p == "u64" for p in row["params"][6:]) and row["params_read"] == [0, 1, 2, 3, 4, 5], row
        assert row["shared"] <= plugin_abi.MAX_SHARED, row
        assert " STACK:0 " in f" {row['usage']} ", f"register spills: {row}"
        block_m = row["block_m"]
        # the tile the torch launcher uses on CUDA
        assert block_m == plugin_abi.plugin_tile(row["dtype"], row["head_dim"])[0]
        b, f, h, n = 2, 6, 8, 77
        assert plugin_abi.plugin_grid((b, f, h, n, row["head_dim"]), block_m, lambda a, c: -(-a // c)) == (
            math.ceil(n / block_m) * b * f * h
        )
    assert done.returncode == 0


@requires_ptxas
def test_compile_refuses_more_shared_memory_than_tensorrt_gives():
    code = (
        "from mindvideo.kernels import aot, plugin_abi\n"
        "plugin_abi.PLUGIN_TILES['bf16', 64] = (128, 128, 8, 3)\n"
        "try:\n"
        "    aot.compile_sparse_causal_plugin('bf16', 8, 64, (-2, -1), None, even_n=True, arch=90)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = _compiler_env()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "bytes of shared memory; TensorRT launches with ≤ 49152" in done.stdout, done.stderr[-3000:]


@requires_triton
def test_driver_ptx_version_is_what_the_driver_reports():
    from mindvideo.kernels import aot

    version = aot.driver_ptx_version()
    assert version is None or (isinstance(version, int) and version >= 80)  # None: no libcuda (Triton's default)
    if HAS_CUDA:
        assert version is not None
