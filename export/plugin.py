"""Sparse-causal attention as one ONNX node that a TensorRT ahead-of-time plugin runs (``--attention plugin``).

With the default ``--attention onnx`` the video UNet's sparse-causal attention exports as plain ops (Gather/Concat of
the source frames' keys and values, then MatMul-Softmax-MatMul), which TensorRT may or may not fuse. With
``--attention plugin`` each such attention becomes one node ::

    mindvideo::sparse_causal_attention(q, k, v) -> out        q, k, v, out: (B, F, heads, N, d)
        frame_offsets: ints   (None / "first frame" encoded as kernels.reference.FIRST_FRAME)
        scale: float          softmax scale
        plugin_namespace: "mindvideo", aot: 1   (read by TensorRT's ONNX parser: bind the node to the AOT plugin)

which TensorRT binds to :mod:`mindvideo.export.trt_plugin` (our Triton kernel, compiled to PTX and embedded in the
engine: no Python at run time). The node's meaning is also written into the file as an ONNX *model-local function*
(:func:`sparse_causal_function`, the same plain-op graph), so onnx.checker, shape inference, polygraphy and
onnxruntime all run the file as it is — the export is verified against PyTorch like any other — and
:func:`for_tensorrt` drops that function before TensorRT parses the graph, so the parser falls back to the plugin
instead of inlining the function.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import helper

from mindvideo import kernels
from mindvideo.kernels.reference import encode_offsets, sparse_causal_reference

DOMAIN = "mindvideo"  # the ONNX domain and the TensorRT plugin namespace
OP = "sparse_causal_attention"  # the ONNX op type and the TensorRT plugin name
VERSION = 1
BACKEND = "onnx-plugin"  # the kernels registry's name for this export-only backend


class _PluginNode(torch.autograd.Function):
    """Runs the reference on 5-D tensors while tracing; the ONNX exporter writes :meth:`symbolic` instead."""

    @staticmethod
    def forward(ctx, q, k, v, frame_offsets: tuple[int, ...], scale: float):
        b, f, h, n, d = q.shape
        flat = [t.reshape(b * f, h, n, d) for t in (q, k, v)]
        return sparse_causal_reference(*flat, f, frame_offsets, scale).reshape(b, f, h, n, d)

    @staticmethod
    def symbolic(g, q, k, v, frame_offsets: tuple[int, ...], scale: float):
        out = g.op(
            f"{DOMAIN}::{OP}",
            q,
            k,
            v,
            frame_offsets_i=list(frame_offsets),
            scale_f=float(scale),
            plugin_namespace_s=DOMAIN,
            aot_i=1,
        )
        out.setType(q.type())
        return out


def _plugin_backend(q, k, v, num_frames, frame_offsets=(-2, -1), scale=None) -> torch.Tensor:
    """The registry backend used while exporting with ``--attention plugin``: ``(B·F, h, N, d)`` in and out, one
    plugin node on the ``(B, F, h, N, d)`` views in the graph."""
    bf, h, n, d = q.shape
    five = (-1, num_frames, h, n, d)
    # the head dim is static: a Python float here (not a traced value) becomes the node's attribute
    scale = int(d) ** -0.5 if scale is None else float(scale)
    out = _PluginNode.apply(q.reshape(five), k.reshape(five), v.reshape(five), encode_offsets(frame_offsets), scale)
    return out.reshape(bf, h, n, d)


kernels.register(
    "sparse_causal_attention",
    BACKEND,
    priority=-100,  # never chosen automatically: only forced by the exporter, and only while exporting
    supports=lambda *args, **kwargs: torch.onnx.is_in_onnx_export(),
)(_plugin_backend)


# ------------------------------------------------------------------------------------------------ the graph side


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's ``mindvideo::sparse_causal_attention`` nodes."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP]


def define_functions(model: onnx.ModelProto) -> int:
    """Give a graph with plugin nodes the model-local function that says what they compute; returns the count of
    plugin nodes (0: nothing changed)."""
    count = len(plugin_nodes(model))
    if count and not any(f.domain == DOMAIN and f.name == OP for f in model.functions):
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        model.functions.append(sparse_causal_function(opset))
    return count


def for_tensorrt(path: str | Path) -> bytes:
    """The graph at ``path`` as TensorRT's parser should see it: without the model-local function, so each plugin
    node binds to the registered plugin instead of being inlined. Weights stay external (pass ``path`` to
    ``OnnxParser.parse`` so it finds them)."""
    model = onnx.load(str(path), load_external_data=False)
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP)]
    del model.functions[:]
    model.functions.extend(kept)
    return model.SerializeToString()


# ------------------------------------------------------------------------------------------------ the function body


def sparse_causal_function(opset: int) -> onnx.FunctionProto:
    """``mindvideo::sparse_causal_attention`` as plain ONNX ops (opset ≥ 15 for ``CastLike``).

    Mirrors :func:`mindvideo.kernels.reference.sparse_causal_reference`: the source frame of query frame f for
    offset o is ``clip(f + o, 0, F − 1)`` (``FIRST_FRAME`` clips to 0); the source frames' keys/values are gathered
    and concatenated along the key axis; softmax(q·scale·kᵀ)·v accumulates in fp32 and returns q's type.
    """
    node = helper.make_node
    body = [
        *(_ints(f"c{i}", [i]) for i in range(6)),
        _ints("minus1", [-1]),
        # F, and the shape pieces the reshapes below need
        node("Shape", ["k"], ["shape"]),  # [B, F, h, N, d]
        node("Slice", ["shape", "c0", "c1"], ["b_dim"]),
        node("Slice", ["shape", "c1", "c2"], ["f_dim"]),
        node("Slice", ["shape", "c2", "c5"], ["hnd_dims"]),
        node("Slice", ["shape", "c0", "c3"], ["bfh_dims"]),
        node("Slice", ["shape", "c4", "c5"], ["d_dim"]),
        node("Squeeze", ["f_dim", "c0"], ["f"]),
        node("Squeeze", ["c0", "c0"], ["zero"]),
        node("Squeeze", ["c1", "c0"], ["one"]),
        node("Sub", ["f", "one"], ["last"]),
        node("Range", ["zero", "f", "one"], ["frames"]),  # (F,)
        # sources = clip(offsets[:, None] + frames[None, :], 0, F − 1): (S, F), flattened offset-major
        _attribute_constant("offsets", "value_ints", onnx.AttributeProto.INTS, "frame_offsets"),
        node("Unsqueeze", ["offsets", "c1"], ["offsets_col"]),
        node("Unsqueeze", ["frames", "c0"], ["frames_row"]),
        node("Add", ["offsets_col", "frames_row"], ["shifted"]),
        node("Clip", ["shifted", "zero", "last"], ["sources"]),
        node("Reshape", ["sources", "minus1"], ["index"]),
        node("Concat", ["b_dim", "minus1", "f_dim", "hnd_dims"], ["split_shape"], axis=0),  # (B, S, F, h, N, d)
        node("Concat", ["bfh_dims", "minus1", "d_dim"], ["joined_shape"], axis=0),  # (B, F, h, S·N, d)
        *_gather_context("k"),
        *_gather_context("v"),
        # softmax(q·scale·kᵀ)·v in fp32, back to q's type
        node("Cast", ["q"], ["q32"], to=onnx.TensorProto.FLOAT),
        _attribute_constant("scale_value", "value_float", onnx.AttributeProto.FLOAT, "scale"),
        node("Mul", ["q32", "scale_value"], ["q_scaled"]),
        node("Transpose", ["k_context"], ["k_t"], perm=[0, 1, 2, 4, 3]),
        node("MatMul", ["q_scaled", "k_t"], ["scores"]),
        node("Softmax", ["scores"], ["probs"], axis=-1),
        node("MatMul", ["probs", "v_context"], ["out32"]),
        node("CastLike", ["out32", "q"], ["out"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP,
        inputs=["q", "k", "v"],
        outputs=["out"],
        nodes=body,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["frame_offsets", "scale"],
    )


def _ints(name: str, values: list[int]) -> onnx.NodeProto:
    tensor = helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values)
    return helper.make_node("Constant", [], [name], value=tensor)


def _attribute_constant(output: str, field: str, kind: int, attribute: str) -> onnx.NodeProto:
    """``Constant(<field> = the calling node's <attribute>)``: how a function body reads its node's attributes."""
    constant = helper.make_node("Constant", [], [output])
    constant.attribute.append(helper.make_attribute_ref(field, kind, ref_attr_name=attribute))
    return constant


def _gather_context(x: str) -> list[onnx.NodeProto]:
    """``x`` (B, F, h, N, d) → every query frame's sources concatenated on the key axis, (B, F, h, S·N, d), fp32."""
    node = helper.make_node
    return [
        node("Gather", [x, "index"], [f"{x}_sources"], axis=1),  # (B, S·F, h, N, d)
        node("Reshape", [f"{x}_sources", "split_shape"], [f"{x}_split"]),  # (B, S, F, h, N, d)
        node("Transpose", [f"{x}_split"], [f"{x}_moved"], perm=[0, 2, 3, 1, 4, 5]),  # (B, F, h, S, N, d)
        node("Reshape", [f"{x}_moved", "joined_shape"], [f"{x}_joined"]),
        node("Cast", [f"{x}_joined"], [f"{x}_context"], to=onnx.TensorProto.FLOAT),
    ]
