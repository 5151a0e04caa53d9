"""onnxruntime-only graph rewrite: every attention core of a graph becomes one ``com.microsoft.MultiHeadAttention``.

After :func:`mindvideo.export.rewrite.canonicalize_attention` every attention of the video UNet (sparse-causal
self-attention, cross-attention, temporal attention) reads ::

    out = MatMul(Softmax(MatMul(Mul(Q, s), Kᵀ)), V)      Q, out: (b, h, n, d)   Kᵀ: (b, h, d, m)   V: (b, h, m, d)

with ``h`` heads of static size ``d``. :func:`fuse_attention` replaces each by ::

    q3  = Reshape(Transpose(Q, [0, 2, 1, 3]), [0, 0, -1])                      (b, n, h·d)
    o3  = com.microsoft.MultiHeadAttention(q3, Transpose(Kᵀ, [0, 1, 3, 2]), V,  num_heads=h, scale=s)
    out = Transpose(Reshape(o3, [0, 0, h, d]), [0, 2, 1, 3])

(key and value in the op's ``(b, h, m, d)`` layout), cancels the transposes this leaves back to back with the ones
the model already has around its heads, and reads ``Shape(out)`` from the ``(b, n, h, d)`` tensor so the last
transpose is computed only where something needs it. The op computes ``softmax(s·Q·Kᵀ)·V`` in fp32 on the CPU.

TensorRT cannot parse the contrib op, so only a graph meant for onnxruntime could be fused. A softmax that is not such
an attention core, or a core whose head count or size is not static, is an error: the rewrite never leaves a graph
half fused.

``mindvideo export`` does not apply it. onnxruntime 1.32 already runs the plain-op cores as ``FusedMatMul`` (Kᵀ's
transpose and the scale folded in), ``Softmax`` and ``MatMul``: the same MLAS kernels the contrib op calls, so the
fused UNet's output is bit-identical and, on the demo student at 60 frames and 1 thread, it was not faster
(``benchmarks/ort_attention_fusion.py``, ``benchmarks/results/ort-attention-fusion-f60.json``). The pass stays
for that A/B and for models whose attention shapes may behave differently.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mindvideo.errors import MindVideoError

from .rewrite import _scalar, remove_dead_nodes

log = logging.getLogger(__name__)

DOMAIN = "com.microsoft"
OP = "MultiHeadAttention"
SWAP_HEADS = [0, 2, 1, 3]  # (b, h, n, d) ↔ (b, n, h, d)


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's ``com.microsoft.MultiHeadAttention`` nodes."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP]


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's shape as far as ONNX shape inference (with data propagation) knows it: ints where static,
    ``None`` where dynamic. Runs on a weightless copy of the graph."""
    graph = model.graph
    small = [i for i in graph.initializer if len(i.dims) <= 1 and not i.data_location]
    small_names = {i.name for i in small}
    weights = [
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in graph.initializer
        if i.name not in small_names
    ]
    light = helper.make_graph(graph.node, "shapes", [*graph.input, *weights], graph.output, small)
    light_model = helper.make_model(light, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(light_model, strict_mode=False, data_prop=True).graph
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.input, *inferred.value_info, *inferred.output)
        if v.type.tensor_type.HasField("shape")
    }


class _Fuser:
    """One pass over a graph; :meth:`core` matches and rewrites one softmax."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.producers = {o: n for n in self.graph.node for o in n.output}
        self.uses = Counter(i for n in self.graph.node for i in n.input)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inits = {i.name: i for i in self.graph.initializer if len(i.dims) <= 1 and not i.data_location}
        self.dims = _static_dims(model)
        self.removed: list[onnx.NodeProto] = []
        self.added: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []  # (insert before, new nodes)
        self.shapes: list[onnx.TensorProto] = []  # the new Reshape targets
        self.shape_reads: list[tuple[str, str]] = []  # (Shape(out), the (b, n, h, d) tensor to read it from)
        self.rewired: list[tuple[str, str]] = []  # (tensor, the tensor its readers read instead)

    def fail(self, softmax: onnx.NodeProto, found: str) -> MindVideoError:
        return MindVideoError(
            f"expected every Softmax of the graph to be an attention core MatMul(Softmax(MatMul(Mul(Q, s), Kᵀ)), V) "
            f"with a static head count and size, to fuse it into {DOMAIN}.{OP}",
            f"{found} at Softmax {softmax.name or softmax.output[0]!r}",
            "run the plain-op graph unfused, or teach mindvideo.export.ort_fusion this pattern",
        )

    def core(self, softmax: onnx.NodeProto) -> None:
        scores = self.producers.get(softmax.input[0])
        if scores is None or scores.op_type != "MatMul" or self.uses[scores.output[0]] != 1:
            raise self.fail(softmax, "a Softmax whose input is not a MatMul used only by it")
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        scaled = self.producers.get(scores.input[0])
        value = None if scaled is None or scaled.op_type != "Mul" else self._scale(scaled)
        if value is None:
            raise self.fail(softmax, "scores whose queries are not multiplied by one constant scale")
        q, scale = value
        after = self.consumers.get(softmax.output[0], [])
        if len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != softmax.output[0]:
            raise self.fail(softmax, "probabilities not consumed by exactly one MatMul with V")
        pv, kt, v = after[0], scores.input[1], after[0].input[1]
        q_dims, k_dims, v_dims = (self.dims.get(name) for name in (q, kt, v))
        if not q_dims or len(q_dims) != 4 or axis not in (-1, 3) or None in (q_dims[1], q_dims[3]):
            raise self.fail(softmax, f"queries of shape {q_dims} (softmax axis {axis})")
        heads, size = q_dims[1], q_dims[3]
        if not k_dims or not v_dims or len(k_dims) != 4 or len(v_dims) != 4 or v_dims[3] != size:
            raise self.fail(softmax, f"keys {k_dims} and values {v_dims} for queries {q_dims}")
        self._replace(softmax, scaled, scores, pv, q, kt, v, heads, size, scale)

    def _scale(self, mul: onnx.NodeProto) -> tuple[str, float] | None:
        for x, c in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            value = _scalar(self.inits, c, self.producers)
            if value is not None:
                return x, float(np.asarray(value, dtype=np.float64).reshape(()))
        return None

    def _replace(self, softmax, scaled, scores, pv, q, kt, v, heads: int, size: int, scale: float) -> None:
        base = pv.output[0]
        nodes: list[onnx.NodeProto] = []
        q3, k4 = f"{base}_mha_q", f"{base}_mha_k"
        q_bnhd = self._transposed(q, SWAP_HEADS, f"{base}_mha_qt", nodes)
        nodes.append(helper.make_node("Reshape", [q_bnhd, self._shape_const(base, "q", [0, 0, -1])], [q3]))
        k4 = self._transposed(kt, [0, 1, 3, 2], k4, nodes)
        o3, o4 = f"{base}_mha_out", f"{base}_mha_heads"
        nodes.append(
            helper.make_node(
                OP, [q3, k4, v], [o3], name=f"{base}_mha", domain=DOMAIN, num_heads=heads, scale=float(scale)
            )
        )
        nodes.append(helper.make_node("Reshape", [o3, self._shape_const(base, "o", [0, 0, heads, size])], [o4]))
        nodes.append(helper.make_node("Transpose", [o4], [base], perm=SWAP_HEADS))
        # the model's own merge of heads, Transpose(out, [0, 2, 1, 3]), now reads the (b, n, h, d) tensor directly
        for consumer in self.consumers.get(base, []):
            perm = next((list(a.ints) for a in consumer.attribute if a.name == "perm"), None)
            if consumer.op_type == "Transpose" and perm == SWAP_HEADS:
                self.rewired.append((consumer.output[0], o4))
            elif consumer.op_type == "Shape" and not consumer.attribute:  # out's shape without materialising out
                self.shape_reads.append((consumer.output[0], o4))
        self.removed += [softmax, scores, pv] + ([scaled] if self.uses[scaled.output[0]] == 1 else [])
        self.added.append((pv, nodes))

    def _transposed(self, name: str, perm: list[int], out: str, nodes: list[onnx.NodeProto]) -> str:
        """``Transpose(name, perm)``, folded into the Transpose that produced ``name`` (gone when they cancel)."""
        source = self.producers.get(name)
        if source is not None and source.op_type == "Transpose":
            inner = next(list(a.ints) for a in source.attribute if a.name == "perm")
            composed = [inner[p] for p in perm]
            if composed == sorted(composed):
                return source.input[0]
            name, perm = source.input[0], composed
        nodes.append(helper.make_node("Transpose", [name], [out], perm=perm))
        return out

    def _shape_const(self, base: str, which: str, values: list[int]) -> str:
        name = f"{base}_mha_{which}_shape"
        self.shapes.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def apply(self) -> None:
        removed = {n.output[0] for n in self.removed}
        before = {anchor.output[0]: nodes for anchor, nodes in self.added}
        order = []
        shapes = dict(self.shape_reads)
        if shapes:
            self.shapes.append(numpy_helper.from_array(np.array(SWAP_HEADS, dtype=np.int64), "mha_swap_heads"))
        for node in self.graph.node:
            order += before.get(node.output[0], [])
            if node.output[0] in shapes:  # Shape(out) = Shape(out_heads)[[0, 2, 1, 3]]
                name = node.output[0]
                node.input[0], node.output[0] = shapes[name], f"{name}_heads"
                order += [node, helper.make_node("Gather", [f"{name}_heads", "mha_swap_heads"], [name], axis=0)]
            elif node.output[0] not in removed:
                order.append(node)
        self.graph.initializer.extend(self.shapes)
        del self.graph.node[:]
        self.graph.node.extend(order)
        outputs = {o.name for o in self.graph.output}
        rename = {old: new for old, new in self.rewired if old not in outputs}
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = rename.get(name, name)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every attention core of ``model`` (in place) into ``com.microsoft.MultiHeadAttention``; returns the
    count. Raises :class:`MindVideoError` when a softmax is not such a core (nothing is changed then)."""
    fuser = _Fuser(model)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    for softmax in softmaxes:
        fuser.core(softmax)  # raises before anything is applied: all or nothing
    fuser.apply()
    if softmaxes and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    remove_dead_nodes(model)
    log.info("attention fused into %s.%s: %d", DOMAIN, OP, len(softmaxes))
    return len(softmaxes)
