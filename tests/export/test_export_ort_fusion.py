"""The onnxruntime-only attention rewrite (:mod:`mindvideo.export.ort_fusion`): every attention core of the exported
teacher and student UNets becomes one ``com.microsoft.MultiHeadAttention``, the graph still matches PyTorch, and a
softmax that is not an attention core is refused with the graph left as it was."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_helpers import make_student_checkpoint, run_cli
from onnx import TensorProto, helper

from mindvideo.checkpoint import load_components
from mindvideo.errors import MindVideoError
from mindvideo.export import load_export
from mindvideo.export.modules import network_module
from mindvideo.export.ort_fusion import fuse_attention, fused_nodes
from mindvideo.export.verify import compare, ort_session, run_ort, run_torch


@pytest.fixture(scope="module")
def student_export(export_ckpt, tmp_path_factory):
    ckpt = make_student_checkpoint(export_ckpt, tmp_path_factory.mktemp("fusion-student") / "ckpt")
    out = ckpt.parent / "out"
    result = run_cli("export", "--checkpoint", ckpt, "--out", out, "--format", "onnx")
    assert result.exit_code == 0, result.output
    return ckpt, out


def _fused(out, tmp_path):
    model = onnx.load(str(out / "onnx" / "unet.onnx"))
    softmaxes = sum(n.op_type == "Softmax" for n in model.graph.node)
    count = fuse_attention(model)
    path = tmp_path / "unet-fused.onnx"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return model, softmaxes, count, path


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_fused_unet_matches_pytorch(which, exported, export_ckpt, student_export, tmp_path):
    ckpt, out = (export_ckpt, exported[0]) if which == "teacher" else student_export
    model, softmaxes, count, path = _fused(out, tmp_path)
    assert softmaxes == 12 and count == 12  # 4 transformers × (sparse-causal, cross, temporal)
    assert len(fused_nodes(model)) == 12 and not any(n.op_type == "Softmax" for n in model.graph.node)
    assert {o.domain for o in model.opset_import} >= {"", "com.microsoft"}
    spec = load_export(out).specs["unet"]
    module = network_module("unet", load_components(ckpt))
    session = ort_session(path)
    for batch, frames in ((1, 1), (3, 3), (2, 8)):
        inputs = spec.sample_inputs({"batch": batch, "frames": frames}, seed=batch + frames)
        errors = compare(run_ort(session, spec, inputs), run_torch(module, spec, inputs))
        assert errors["noise_pred"].max_rel <= 1e-4, (which, batch, frames, errors)


def _softmax_graph() -> onnx.ModelProto:
    """An attention core, then a softmax over its output that is no attention at all."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 8])
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["q"]),
        helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "x"], ["attn"]),
        helper.make_node("Softmax", ["attn"], ["y"], axis=-1),
    ]
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [8**-0.5])
    graph = helper.make_graph(nodes, "g", [x], [y], [scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_softmax_that_is_no_attention_is_refused_and_nothing_changes():
    model = _softmax_graph()
    before = model.SerializeToString()
    with pytest.raises(MindVideoError) as info:
        fuse_attention(model)
    message = str(info.value)
    assert "expected every Softmax of the graph to be an attention core" in message
    assert "scores whose queries are not multiplied by one constant scale at Softmax 'y'" in message
    assert "run the plain-op graph unfused" in message
    assert model.SerializeToString() == before


def test_the_core_alone_is_fused_exactly():
    model = _softmax_graph()
    model.graph.node.pop()  # drop the stray softmax: attn is the output
    model.graph.output[0].name = "attn"
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 8), dtype=np.float32)
    want = ort_session_from(model).run(None, {"x": x})[0]
    assert fuse_attention(model) == 1 and len(fused_nodes(model)) == 1
    got = ort_session_from(model).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def ort_session_from(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
