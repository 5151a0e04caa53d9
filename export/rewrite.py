"""Small ONNX graph passes that put attention into the one pattern TensorRT's fusion looks for.

After export and constant folding, the graphs hold attention in two spellings:

* the video attentions (``mindvideo.kernels`` reference backend): ``Softmax(MatMul(Mul(Q, s), Kᵀ))``, Q pre-scaled,
  but wrapped in ``Cast``-to-float32 nodes that are no-ops in an fp32 graph;
* ``F.scaled_dot_product_attention`` (the UNet's cross-attention, the encoder, the VAE's mid-block), which the
  exporter writes as ``Softmax(MatMul(Mul(Q, √s), Mul(Kᵀ, √s)))``: the scale split over both operands.

:func:`drop_identity_casts` removes casts to the type a tensor already has; :func:`prescale_queries` folds a split
scale into one multiplication of Q, so every attention reads ``Softmax(MatMul(Mul(Q, s), Kᵀ))``. Both are exact up to
float rounding of ``√s·√s``; the verification against PyTorch runs after them.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor that shape inference can type. Runs on a weightless copy of the graph
    (initializers become typed inputs), so it costs no memory and works past protobuf's 2 GB limit."""
    graph = model.graph
    weights = [onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in graph.initializer]
    light = onnx.helper.make_graph(graph.node, "types", [*graph.input, *weights], graph.output)
    light_model = onnx.helper.make_model(
        light, opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions
    )
    inferred = onnx.shape_inference.infer_shapes(light_model, strict_mode=False).graph
    types = {i.name: i.data_type for i in graph.initializer}
    for v in (*inferred.input, *inferred.value_info, *inferred.output):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def drop_identity_casts(model: onnx.ModelProto) -> int:
    """Remove ``Cast`` nodes whose input already has the target type (not on graph outputs); returns the count."""
    types, outputs = _types(model), {o.name for o in model.graph.output}
    dropped = []
    for node in model.graph.node:
        if node.op_type != "Cast" or node.output[0] in outputs:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        if types.get(node.input[0]) == to:
            _rename_uses(model.graph, node.output[0], node.input[0])
            dropped.append(node)
    for node in dropped:
        model.graph.node.remove(node)
    return len(dropped)


def _scalar(inits: dict[str, onnx.TensorProto], name: str, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of ``name`` if it is a one-element constant (initializer or Constant node)."""
    if name in inits:
        value = numpy_helper.to_array(inits[name])
        return value if value.size == 1 else None
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        value = numpy_helper.to_array(node.attribute[0].t)
        return value if value.size == 1 else None
    return None


def _scaled(inits, name, producers, uses) -> tuple[str, np.ndarray] | None:
    """``(x, s)`` when ``name`` = Mul(x, s) with a scalar constant ``s`` and ``name`` is used once."""
    node = producers.get(name)
    if node is None or node.op_type != "Mul" or uses[name] != 1:
        return None
    for x, c in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        value = _scalar(inits, c, producers)
        if value is not None:
            return x, value
    return None


def prescale_queries(model: onnx.ModelProto) -> int:
    """``Softmax(MatMul(Mul(Q, a), Mul(Kᵀ, b)))`` → ``Softmax(MatMul(Mul(Q, a·b), Kᵀ))``; returns the count."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    uses = Counter(i for n in graph.node for i in n.input)
    inits = {i.name: i for i in graph.initializer if len(i.dims) <= 1 and not i.data_location}
    count = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        matmul = producers.get(softmax.input[0])
        if matmul is None or matmul.op_type != "MatMul":
            continue
        q, k = _scaled(inits, matmul.input[0], producers, uses), _scaled(inits, matmul.input[1], producers, uses)
        if q is None or k is None:
            continue
        scale = (q[1].astype(np.float64) * k[1].astype(np.float64)).astype(q[1].dtype).reshape(q[1].shape)
        name = f"{matmul.output[0]}_qscale"
        graph.initializer.append(numpy_helper.from_array(scale, name))
        q_node = producers[matmul.input[0]]
        q_node.input[:] = [q[0], name]
        matmul.input[1] = k[0]  # the Mul on Kᵀ is now dead
        count += 1
    remove_dead_nodes(model)
    return count


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs reach a graph output, then unused initializers."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node.input)
    if len(keep) != len(graph.node):
        kept = list(reversed(keep))
        del graph.node[:]
        graph.node.extend(kept)
    used = [i for i in graph.initializer if i.name in live]
    if len(used) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(used)


def canonicalize_attention(model: onnx.ModelProto) -> dict[str, int]:
    """Both passes; returns what they changed (logged, and recorded in the manifest)."""
    changes = {"identity_casts_dropped": drop_identity_casts(model), "split_scales_folded": prescale_queries(model)}
    log.info("attention rewrite: %s", changes)
    return changes
