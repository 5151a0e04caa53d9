"""Built-in verification: onnxruntime (CPU) against PyTorch on the spec's sample inputs.

The reference is always the fp32 PyTorch module with the reference attention backend: an fp16 graph is judged by how
far it lands from the numbers the model means, not from another fp16 computation. Per output we report

* ``max_abs`` = max |ort − torch|,
* ``max_rel`` = max_abs / max |torch|, the error relative to the output's scale (element-wise relative error is
  meaningless where outputs cross zero),

and fail the export when ``max_rel`` passes the tolerance or an output is not finite.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mindvideo.errors import MindVideoError

from .graph import export_context
from .spec import ExportSpec

log = logging.getLogger(__name__)

TOLERANCE = {"fp32": 5e-4, "fp16": 3e-2}  # max_rel; fp16 covers ~10 bits of mantissa through a deep network


class VerificationError(MindVideoError):
    """The exported graph does not match PyTorch within tolerance (nothing was written to the output folder)."""


@dataclasses.dataclass(frozen=True)
class OutputError:
    max_abs: float
    max_rel: float


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: the axis sizes it ran at and the error of every output."""

    dims: dict[str, int]
    outputs: dict[str, OutputError]

    @property
    def worst(self) -> OutputError:
        return max(self.outputs.values(), key=lambda e: e.max_rel)

    def to_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "outputs": {k: dataclasses.asdict(v) for k, v in self.outputs.items()}}


def ort_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (all graph optimisations on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session, spec: ExportSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Feed fp32 ``inputs`` cast to the graph's dtypes; outputs come back as float32 arrays."""
    feed = {t.name: inputs[t.name].to(t.torch_dtype).numpy() for t in spec.inputs}
    outputs = session.run(spec.output_names, feed)
    return {name: np.asarray(o, dtype=np.float32) for name, o in zip(spec.output_names, outputs)}


def run_torch(module: nn.Module, spec: ExportSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The fp32 module on the same inputs, with the reference attention backend."""
    with export_context():
        out = module(*(inputs[name] for name in spec.input_names))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {name: o.float().numpy() for name, o in zip(spec.output_names, out)}


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict[str, OutputError]:
    errors = {}
    for name, ref in want.items():
        out = got[name]
        if out.shape != ref.shape:
            raise MindVideoError(f"expected output {name} of shape {ref.shape} from onnxruntime", f"{out.shape}")
        if not np.isfinite(out).all():
            errors[name] = OutputError(float("inf"), float("inf"))
            continue
        max_abs = float(np.abs(out - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        errors[name] = OutputError(max_abs, max_abs / max(scale, 1e-12))
    return errors


def verify(
    path: Path, module: nn.Module, spec: ExportSpec, dims_list: Sequence[Mapping[str, int]], tolerance: float
) -> list[Check]:
    """Run the graph at ``path`` and ``module`` (fp32) at each of ``dims_list``; raise :class:`VerificationError`
    if any output's ``max_rel`` exceeds ``tolerance`` or is not finite."""
    session = _guarded(lambda: ort_session(path), spec, "load")
    checks = []
    for i, dims in enumerate(dims_list):
        inputs = spec.sample_inputs(dims, seed=i)
        got = _guarded(lambda: run_ort(session, spec, inputs), spec, f"run at {dict(dims)}")  # noqa: B023
        check = Check(dict(spec.dims("opt", **dims)), compare(got, run_torch(module, spec, inputs)))
        for name, err in check.outputs.items():
            log.info("%s %s at %s: max_abs %.3g max_rel %.3g", spec.name, name, check.dims, err.max_abs, err.max_rel)
            if not err.max_rel <= tolerance:
                raise VerificationError(
                    f"expected onnxruntime to match PyTorch within max_rel {tolerance:g} for {spec.name}.{name} "
                    f"({spec.precision}) at {check.dims}",
                    f"max_rel {err.max_rel:.3g} (max_abs {err.max_abs:.3g})",
                    "nothing was written; report this, or pass a larger --rtol if the error is acceptable",
                )
        checks.append(check)
    return checks


def _guarded(call: Callable[[], Any], spec: ExportSpec, what: str) -> Any:
    """onnxruntime failures on our own graph are export defects: report them as one clear error."""
    try:
        return call()
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidArgument / RuntimeException types
        raise VerificationError(
            f"expected the exported {spec.name} graph to {what} under onnxruntime",
            f"{type(exc).__name__}: {str(exc)[:300]}",
            "nothing was written; use the default torchscript exporter, or report this",
        ) from None


def verification_dims(spec: ExportSpec) -> list[dict[str, int]]:
    """Where the export is checked: the profile's ``opt`` and ``min`` (distinct from the trace sizes, so a size baked
    in at trace time shows up)."""
    dims = [spec.dims("opt"), spec.dims("min")]
    return [d for i, d in enumerate(dims) if d not in dims[:i]]
