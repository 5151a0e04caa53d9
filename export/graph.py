"""From a traced module to a clean, checked ONNX file.

1. :func:`trace_to_onnx`: ``torch.onnx.export`` with the spec's names and dynamic axes, constant folding on.
   The TorchScript exporter (``dynamo=False``) is the default: in torch 2.13 it exports the video UNet with correct
   dynamic batch and frame axes in ~1 s (tiny config), while the dynamo exporter mis-translates the UNet's
   ``repeat_interleave`` over frames (the graph fails for batch ≠ frames) and takes ~12× longer. ``dynamo`` stays
   selectable; the built-in verification catches such graphs either way.
2. :func:`cleanup`: polygraphy's ``fold_constants`` (onnx-graphsurgeon + onnxruntime): folds the shape arithmetic the
   tracer leaves behind and removes dead nodes; skipped with a log line when polygraphy is not installed.
3. :func:`mindvideo.export.rewrite.canonicalize_attention`: every attention as ``Softmax(MatMul(Mul(Q, s), Kᵀ))``.
4. :func:`save_graph`: one ``.onnx`` file, plus one ``.onnx.data`` external-data file when the weights pass the
   2 GB protobuf limit; ``metadata_props`` carry the network name and spec; ONNX shape inference and
   ``onnx.checker`` run on the saved file (path-based, so large models work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from mindvideo import kernels
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import current_umask

from . import plugin
from .rewrite import canonicalize_attention
from .spec import ATTENTION_MODES, ExportSpec

log = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET, MAX_OPSET = 17, 20  # 20: the TorchScript exporter's newest opset in torch 2.13
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; keep a margin for the graph itself


@contextlib.contextmanager
def export_context(attention: str = "onnx") -> Iterator[None]:
    """Plain-op attention (the reference backend: Gather/Concat + MatMul-Softmax-MatMul with Q pre-scaled, the
    pattern TensorRT fuses), no autograd, and the tracer's expected warnings silenced. ``attention="plugin"``
    writes the sparse-causal attention as one plugin node instead (:mod:`mindvideo.export.plugin`)."""
    if attention not in ATTENTION_MODES:
        raise MindVideoError(f"expected an attention export among {ATTENTION_MODES}", repr(attention))
    plugin_nodes = (
        kernels.use_backend(plugin.BACKEND, op="sparse_causal_attention")
        if attention == "plugin"
        else contextlib.nullcontext()
    )
    with (
        kernels.use_backend("reference"),
        plugin_nodes,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        yield


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MindVideoError(
            f"expected --opset between {MIN_OPSET} and {MAX_OPSET}",
            str(opset),
            "TensorRT's demos use 17–19; 17 is the default",
        )
    return opset


def check_exporter(exporter: str, attention: str) -> None:
    """The exporter exists and can write the attention mode (the plugin node is a TorchScript ``symbolic``)."""
    if exporter not in EXPORTERS:
        raise MindVideoError(f"expected an exporter among {EXPORTERS}", repr(exporter))
    if attention == "plugin" and exporter != "torchscript":
        raise MindVideoError(
            "expected --exporter torchscript with --attention plugin", exporter, "drop --exporter dynamo"
        )


def trace_to_onnx(module: nn.Module, spec: ExportSpec, path: Path, *, opset: int, exporter: str) -> None:
    """Export ``module`` (already in the spec's precision) to ``path`` with the spec's inputs, outputs and dynamic
    axes, tracing at ``spec.trace_inputs()``. Large models may spill external-data files next to ``path``."""
    check_exporter(exporter, spec.attention)
    inputs = {k: v.to(t.torch_dtype) for (k, v), t in zip(spec.trace_inputs().items(), spec.inputs)}
    args = tuple(inputs.values())
    with export_context(spec.attention):
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                custom_opsets={plugin.DOMAIN: plugin.VERSION} if spec.attention == "plugin" else None,
            )
        else:
            dims = {
                name: torch.export.Dim(name, min=a.min, max=max(a.max, a.min + 1)) for name, a in spec.axes.items()
            }
            dynamic = {t.name: {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs}
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=dynamic,
                verbose=False,
            )
            program.save(str(path), external_data=True)


def cleanup(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Constant folding and dead-node removal with polygraphy; returns the model and what ran.

    Folding runs on a weightless copy of the graph (large initializers become typed inputs) and the result is
    spliced back into ``model`` in place, so an SD-1.5 UNet's gigabytes of weights are never copied: the tracer
    already folded every op on weights, what is left to fold is shape arithmetic and small constants.
    """
    try:
        import onnx_graphsurgeon  # noqa: F401  (polygraphy needs it and would try to pip-install it otherwise)
        from polygraphy.backend.onnx import fold_constants
    except ImportError:
        log.info('polygraphy / onnx-graphsurgeon not installed: graph cleanup skipped (pip install -e ".[gpu]")')
        return model, "none (polygraphy or onnx-graphsurgeon absent)"
    before = len(model.graph.node)
    light, weights = _without_weights(model)
    with _quiet_polygraphy():
        folded = fold_constants(light, num_passes=None, do_shape_inference=True, fold_shapes=True, error_ok=True)
    _splice(model, folded.graph, weights)
    log.info("polygraphy fold_constants: %d → %d nodes", before, len(model.graph.node))
    return model, "polygraphy.fold_constants"


_WEIGHT_BYTES = 1 << 16  # initializers above this stay out of the folding copy


def _without_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``model`` whose large initializers are graph inputs of the same type and shape; their names."""
    graph = model.graph
    small, weights, inputs = [], set(), []
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or len(init.raw_data) > _WEIGHT_BYTES:
            weights.add(init.name)
            inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            small.append(init)
    light = onnx.helper.make_graph(graph.node, graph.name, [*graph.input, *inputs], graph.output, small)
    light_model = onnx.helper.make_model(
        light, opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions
    )
    return light_model, weights


def _splice(model: onnx.ModelProto, folded: onnx.GraphProto, weights: set[str]) -> None:
    """Put ``folded``'s nodes and small constants into ``model``; keep its weights (those still used) in place."""
    graph = model.graph
    used = {name for node in folded.node for name in node.input} | {o.name for o in folded.output}
    kept = [i for i in graph.initializer if i.name in weights and i.name in used]
    keep_names = {i.name for i in kept}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in keep_names:
            del graph.initializer[i]
    graph.initializer.extend(folded.initializer)
    del graph.node[:]
    graph.node.extend(folded.node)
    del graph.value_info[:]
    graph.value_info.extend(folded.value_info)


@contextlib.contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    import onnxruntime
    from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER
    from polygraphy.logger import G_LOGGER

    previous = G_LOGGER.module_severity, GS_LOGGER.severity
    quiet = log.getEffectiveLevel() > logging.DEBUG
    G_LOGGER.module_severity = G_LOGGER.ERROR if quiet else G_LOGGER.INFO
    # graph-surgeon logs on its own: its folding copies of a graph with a model-local function (the plugin node's)
    # fail onnxruntime's checks and are skipped with a warning, which changes nothing in the result
    GS_LOGGER.severity = GS_LOGGER.ERROR if quiet else GS_LOGGER.INFO
    onnxruntime.set_default_logger_severity(3)  # the folding sessions' optimiser notes are noise here
    try:
        yield
    finally:
        G_LOGGER.module_severity, GS_LOGGER.severity = previous


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers (including external ones, by their declared shape)."""
    total = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        total += count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def save_graph(model: onnx.ModelProto, path: Path, spec: ExportSpec) -> list[Path]:
    """Save, run shape inference and the checker on the saved file; returns ``[.onnx, (.onnx.data)]``."""
    del model.metadata_props[:]
    for key, value in (("mindvideo.network", spec.name), ("mindvideo.spec", json.dumps(spec.to_dict()))):
        model.metadata_props.add(key=key, value=value)
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
    data_name = f"{path.name}.data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name if external else None,
        size_threshold=1024,
    )
    onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=False, data_prop=True)
    onnx.checker.check_model(str(path), full_check=False)
    files = [path] + ([path.with_name(data_name)] if external else [])
    for f in files:  # onnx writes external data 0600; an export folder is for every user of the machine
        os.chmod(f, 0o666 & ~current_umask())
    log.info("%s: saved %s%s", spec.name, path.name, f" + {data_name}" if external else "")
    return files


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    files: list[Path]  # the .onnx, then its external data if any
    cleanup: str  # what folded the constants
    rewrites: dict[str, int]  # what :func:`canonicalize_attention` changed
    nodes: int


def finalize(raw: Path, out: Path, spec: ExportSpec) -> GraphInfo:
    """Load the traced graph at ``raw``, fold constants, canonicalise attention, save and check it at ``out``."""
    model = onnx.load(str(raw), load_external_data=True)
    plugin.define_functions(model)  # before anything runs the graph: onnxruntime needs the plugin op's meaning
    model, how = cleanup(model)
    rewrites = canonicalize_attention(model)
    files = save_graph(model, out, spec)
    return GraphInfo(files, how, rewrites, len(model.graph.node))
