"""Our Triton sparse-causal kernel as a TensorRT ahead-of-time plugin (``mindvideo::sparse_causal_attention``), for
TensorRT 10.9–10.x; the ONNX side (the node and its ONNX function) is :mod:`.plugin`. Not yet run on a GPU.

No ``from __future__ import annotations`` here, and ``typing.Tuple``/``List``/``Union`` as TensorRT's own samples
write them: ``tensorrt.plugin`` reads the decorated functions' annotations with ``inspect.signature``, so they must
be real types, not strings.
"""

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from mindvideo.errors import MindVideoError

from .plugin import DOMAIN, OP
from .trt_import import require_tensorrt

PLUGIN_ID = f"{DOMAIN}::{OP}"
MIN_TENSORRT, MAX_TENSORRT = (10, 9), (11, 0)  # [min, max) as (major, minor)
_registered = False


def fingerprint() -> str:
    """What a plugin engine depends on beyond the graph (part of the engine cache key, so a change rebuilds plugin
    engines): the sources that decide the compiled kernel and its launch, the Triton that compiles it, and the PTX
    version it is emitted for (this machine's driver)."""
    from mindvideo import kernels
    from mindvideo.kernels import aot

    digest = hashlib.sha256()
    kernel_dir = Path(kernels.__file__).parent
    for source in (
        *(kernel_dir / n for n in ("sparse_causal.py", "aot.py", "plugin_abi.py", "checks.py", "reference.py")),
        Path(__file__),
    ):
        digest.update(source.read_bytes())
    try:
        digest.update(importlib.metadata.version("triton").encode())
        digest.update(str(aot.driver_ptx_version()).encode())
    except importlib.metadata.PackageNotFoundError:
        digest.update(b"no-triton")
    return digest.hexdigest()


def tensorrt_problem(version: str) -> str | None:
    """Why TensorRT ``version`` cannot build the plugin, or ``None``: ``tensorrt.plugin`` gained ``aot_impl`` in
    10.9, and TensorRT 11's strongly typed networks are not handled by this package's builder."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"an unreadable TensorRT version {version!r}"
    if not MIN_TENSORRT <= major_minor < MAX_TENSORRT:
        return f"TensorRT {version}"
    return None


def require_plugin_tensorrt() -> Any:
    """The ``tensorrt`` module if it can build the plugin, else :class:`MindVideoError` saying what to install."""
    trt = require_tensorrt()
    problem = tensorrt_problem(trt.__version__)
    if problem:
        raise MindVideoError(
            "expected TensorRT 10.9–10.x for the sparse-causal plugin (tensorrt.plugin ahead-of-time kernels)",
            problem,
            "pip install 'tensorrt>=10.9,<11', or export with --attention onnx",
        )
    return trt


def register() -> None:
    """Register the plugin with TensorRT's plugin registry (idempotent). Raises :class:`MindVideoError` without
    TensorRT ("TensorRT is not installed") or with a TensorRT that cannot build it.

    The decorated functions (``tensorrt.plugin``; ``aot_impl`` arrived in TensorRT 10.9; TensorRT 11 makes every
    network strongly typed, which this package's builder does not handle yet):

    * ``@trtp.register`` — the node's output is shaped like ``q``; attributes ``frame_offsets`` (ints) and ``scale``
      (declared as a one-element float32 array: TensorRT's creator converts a ``float`` attribute with ``float()`` of a
      length-1 array, which NumPy ≥ 2.4 refuses);
    * ``@trtp.autotune`` — fp16, bf16 or fp32, the same for all four tensors, linear layout;
    * ``@trtp.aot_impl`` — compiles the kernel to PTX for the building GPU (:func:`mindvideo.kernels.aot.
      compile_sparse_causal_plugin`) and returns it with its launch geometry as TensorRT shape expressions; TensorRT
      embeds the PTX in the engine, which then runs without Python or this package;
    * ``@trtp.impl`` — a just-in-time fallback for nodes without ``aot = 1``: the same attention through our torch
      launcher on TensorRT's stream.

    The ONNX side (the node, its ONNX function, stripping that function before parsing) is :mod:`.plugin`;
    :func:`mindvideo.export.tensorrt.build_engine` calls :func:`register` before it parses a graph with plugin nodes.
    """
    global _registered
    trt = require_plugin_tensorrt()
    if _registered:
        return
    from typing import List, Tuple, Union  # noqa: UP035  (see the module docstring)

    import numpy as np
    import numpy.typing as npt
    import tensorrt.plugin as trtp

    from mindvideo.kernels import aot, plugin_abi

    dtypes = {trt.float16: "fp16", trt.bfloat16: "bf16", trt.float32: "fp32"}
    ptx_version = aot.driver_ptx_version()  # PTX the driver here can load (Triton's default may be newer)

    @trtp.register(PLUGIN_ID)
    def _describe(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        frame_offsets: npt.NDArray[np.int32],
        scale: npt.NDArray[np.float32],
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(PLUGIN_ID)
    def _combinations(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
    ) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination("FP16|BF16|FP32, FP16|BF16|FP32, FP16|BF16|FP32, FP16|BF16|FP32", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _ahead_of_time(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        frame_offsets: npt.NDArray[np.int32],
        scale: npt.NDArray[np.float32],
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006, UP007
        dims = q.shape_expr  # (B, F, heads, N, d): heads and d are static, N too for a fixed resolution
        dtype, head_dim, tokens = dtypes[q.dtype], _constant(dims[4], "head dim"), _constant_or_none(dims[3])
        block_n = plugin_abi.plugin_tile(dtype, head_dim)[1]
        kernel = aot.compile_sparse_causal_plugin(
            dtype,
            num_heads=_constant(dims[2], "heads"),
            head_dim=head_dim,
            frame_offsets=tuple(int(o) for o in frame_offsets),  # already encoded (FIRST_FRAME for None)
            scale=float(scale[0]),
            even_n=tokens is not None and tokens % block_n == 0,  # a static N that fills every key block
            ptx_version=ptx_version,
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x = plugin_abi.plugin_grid(tuple(dims), kernel.block_m, trtp.cdiv)
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in plugin_abi.plugin_scalars(tuple(dims))])
        return kernel.name, kernel.ptx, launch, scalars

    @trtp.impl(PLUGIN_ID)
    def _just_in_time(
        q: trtp.Tensor,
        k: trtp.Tensor,
        v: trtp.Tensor,
        frame_offsets: npt.NDArray[np.int32],
        scale: npt.NDArray[np.float32],
        outputs: Tuple[trtp.Tensor],  # noqa: UP006
        stream: int,
    ) -> None:
        import torch

        from mindvideo.kernels.sparse_causal import sparse_causal_plugin_attention

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            tensors = [torch.as_tensor(t, device="cuda") for t in (q, k, v, outputs[0])]
            offsets = tuple(int(o) for o in frame_offsets)
            sparse_causal_plugin_attention(*tensors[:3], offsets, float(scale[0]), out=tensors[3])

    _registered = True


def _constant(expr: Any, what: str) -> int:
    value = _constant_or_none(expr)
    if value is None:
        raise ValueError(f"{PLUGIN_ID}: expected a static {what} (the kernel is compiled for it), got a dynamic one")
    return value


def _constant_or_none(expr: Any) -> int | None:
    """A TensorRT shape expression's value when it is a build-time constant."""
    if getattr(expr, "is_fake", False) or not expr.is_constant:
        return None
    return int(expr.constant_value())
