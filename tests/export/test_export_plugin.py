"""``--attention plugin``: the sparse-causal attention as one TensorRT-plugin node with an ONNX function.

TensorRT cannot run here; what can: the exported graph under onnxruntime (which runs the node's ONNX function) at
several batch and frame counts against PyTorch, the node's attributes, the function against the reference on the
offsets the UNet does not use, the graph TensorRT's parser would get, and the refusals.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from export_helpers import run_cli
from onnx import helper

from mindvideo.checkpoint import load_components
from mindvideo.export import load_export, plugin
from mindvideo.export.cache import BuildConfig, Target, engine_key
from mindvideo.export.modules import network_module
from mindvideo.export.verify import compare, ort_session, run_ort, run_torch
from mindvideo.kernels.reference import encode_offsets, sparse_causal_reference
from mindvideo.models.attention import VideoTransformerBlock


@pytest.fixture(scope="module")
def plugin_export(export_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plugin") / "out"
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", out, "--attention", "plugin")
    assert result.exit_code == 0, result.output
    return out


def _sparse_causal_layers(unet: torch.nn.Module) -> list[VideoTransformerBlock]:
    return [m for m in unet.modules() if isinstance(m, VideoTransformerBlock)]


def test_every_sparse_causal_attention_is_one_plugin_node(plugin_export, export_ckpt):
    model = onnx.load(str(plugin_export / "onnx" / "unet.onnx"))
    layers = _sparse_causal_layers(load_components(export_ckpt)["unet"])
    nodes = plugin.plugin_nodes(model)
    assert len(nodes) == len(layers) > 0
    for node, layer in zip(nodes, layers):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["frame_offsets"] == list(encode_offsets(layer.frame_offsets))
        head_dim = layer.attn1.to_q.out_features // layer.attn1.heads
        assert attrs["scale"] == pytest.approx(head_dim**-0.5)
        assert attrs["plugin_namespace"] == plugin.DOMAIN.encode() and attrs["aot"] == 1
    # the plugin compiles its kernel for fixed heads, tokens and head dim: those must be static in the graph
    shapes = {v.name: v.type.tensor_type.shape for v in model.graph.value_info}
    for node in nodes:
        dims = [d.dim_value or d.dim_param for d in shapes[node.input[0]].dim]
        assert dims[:2] == ["batch", "frames"] and all(isinstance(x, int) and x > 0 for x in dims[2:]), dims
    assert [(f.domain, f.name) for f in model.functions] == [(plugin.DOMAIN, plugin.OP)]
    assert any(o.domain == plugin.DOMAIN for o in model.opset_import)
    # the sparse-causal softmaxes moved into the nodes; cross- and temporal attention stay plain ops
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 12 - len(layers)
    spec = load_export(plugin_export).specs["unet"]
    assert spec.attention == "plugin" and spec.to_dict()["attention"] == "plugin"


@pytest.mark.parametrize("batch, frames", [(1, 1), (3, 3), (2, 8)])
def test_plugin_graph_matches_pytorch_under_onnxruntime(plugin_export, export_ckpt, batch, frames):
    exported = load_export(plugin_export)
    spec, tol = exported.specs["unet"], exported.manifest["networks"]["unet"]["verification"]["tolerance"]
    inputs = spec.sample_inputs({"batch": batch, "frames": frames}, seed=batch + frames)
    got = run_ort(ort_session(exported.onnx_path("unet")), spec, inputs)
    unet = network_module("unet", load_components(export_ckpt))
    errors = compare(got, run_torch(unet, spec, inputs))
    print(f"plugin graph vs PyTorch at batch {batch}, frames {frames}: max_rel {errors['noise_pred'].max_rel:.2e}")
    assert errors["noise_pred"].max_rel <= tol


def test_switching_attention_reexports_only_the_unet(plugin_export, exported_copy, export_ckpt):
    onnx_key = json.loads((exported_copy / "manifest.json").read_text())["networks"]["unet"]["cache_key"]
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", exported_copy, "--attention", "plugin")
    assert result.exit_code == 0, result.output
    manifest = json.loads((exported_copy / "manifest.json").read_text())
    assert manifest["settings"]["attention"] == "plugin"
    assert manifest["networks"]["unet"]["cache_key"] != onnx_key
    assert (
        manifest["networks"]["unet"]["cache_key"]
        == load_export(plugin_export).manifest["networks"]["unet"]["cache_key"]
    )
    assert result.stdout.count("reused") == 2  # encoder and decoder do not depend on the option


def test_tensorrt_sees_the_nodes_without_their_function(plugin_export):
    path = plugin_export / "onnx" / "unet.onnx"
    stripped = onnx.load_from_string(plugin.for_tensorrt(path))
    assert not stripped.functions
    assert len(plugin.plugin_nodes(stripped)) == len(plugin.plugin_nodes(onnx.load(str(path))))
    # without the function nothing but a plugin can run the node: onnxruntime refuses it
    with pytest.raises(Exception, match=plugin.OP):
        onnxruntime.InferenceSession(stripped.SerializeToString(), providers=["CPUExecutionProvider"])


def _single_node_model(offsets, dtype: int, opset: int = 17) -> onnx.ModelProto:
    node = helper.make_node(
        plugin.OP, ["q", "k", "v"], ["out"], domain=plugin.DOMAIN, frame_offsets=list(offsets), scale=0.3
    )
    io = [helper.make_tensor_value_info(n, dtype, ["B", "F", 2, 7, 8]) for n in ("q", "k", "v", "out")]
    graph = helper.make_graph([node], "one_node", io[:3], io[3:])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(plugin.DOMAIN, plugin.VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    assert plugin.define_functions(model) == 1
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("offsets", [(-2, -1), (None, -1), (-1,), (-3, 0, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_function_equals_the_reference_for_any_offsets(offsets, dtype):
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    session = onnxruntime.InferenceSession(
        _single_node_model(encode_offsets(offsets), onnx_type).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    gen = np.random.default_rng(abs(hash((offsets, dtype.__name__))) % 2**32)
    for b, f in ((1, 1), (2, 2), (2, 5)):
        q, k, v = (gen.standard_normal((b, f, 2, 7, 8)).astype(dtype) for _ in range(3))
        got = session.run(None, {"q": q, "k": k, "v": v})[0]
        flat = [torch.from_numpy(x.astype(np.float32)).reshape(b * f, 2, 7, 8) for x in (q, k, v)]
        want = sparse_causal_reference(*flat, f, offsets, 0.3).reshape(b, f, 2, 7, 8).numpy()
        assert got.dtype == dtype
        np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-6 if dtype == np.float32 else 2e-3)


def test_export_context_writes_reference_attention_unless_the_plugin_is_asked_for(monkeypatch):
    """The default export traces the reference attention for both video attentions (its fp32 casts and the pattern
    TensorRT fuses), whatever MINDVIDEO_ATTENTION_BACKEND says; the plugin mode changes only the sparse-causal op."""
    from mindvideo import kernels
    from mindvideo.export.graph import export_context

    q = torch.randn(4, 2, 8, 16)
    sparse, temporal = ("sparse_causal_attention", q, q, q, 2), ("temporal_attention", q, q, q)
    monkeypatch.setenv("MINDVIDEO_ATTENTION_BACKEND", "sdpa")
    with export_context():
        assert kernels.select(*sparse).name == "reference"
        assert kernels.select(*temporal).name == "reference"
    with export_context("plugin"):
        assert kernels.select(*temporal).name == "reference"
        with pytest.raises(Exception, match="does not accept"):  # the plugin node exists only inside an ONNX export
            kernels.select(*sparse)


@pytest.mark.parametrize(
    ("version", "ok"),
    [("10.9.0.34", True), ("10.13.2", True), ("10.8.0", False), ("10.3.1", False), ("11.1.0", False)],
)
def test_tensorrt_versions_that_can_build_the_plugin(version, ok):
    from mindvideo.export.trt_plugin import tensorrt_problem

    assert (tensorrt_problem(version) is None) == ok
    assert tensorrt_problem("ten.nine") is not None


def test_plugin_with_the_dynamo_exporter_exits_2(export_ckpt, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "export", "--checkpoint", export_ckpt, "--out", out, "--attention", "plugin", "--exporter", "dynamo"
    )
    assert result.exit_code == 2 and "--exporter torchscript" in result.output
    assert "exporting" not in result.output  # refused before anything was traced
    assert "Traceback" not in result.output and not out.exists()


def test_plugin_engines_have_their_own_cache_key():
    target, build, profile = Target("10.9.0", "NVIDIA H100 80GB HBM3", "9.0"), BuildConfig("fp16"), {"x": [(1,)] * 3}
    plain = engine_key("abc", build, profile, target)
    assert engine_key("abc", build, profile, target, plugins=None) == plain
    with_plugin = engine_key("abc", build, profile, target, plugins={"sparse_causal_attention": "k1"})
    assert with_plugin != plain
    assert with_plugin != engine_key("abc", build, profile, target, plugins={"sparse_causal_attention": "k2"})


def test_registering_the_tensorrt_plugin_without_tensorrt_says_how_to_install():
    from mindvideo.errors import MindVideoError
    from mindvideo.export import trt_plugin
    from mindvideo.export.trt_import import NOT_INSTALLED

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MindVideoError, match="TensorRT is not installed"):
        trt_plugin.register()
    assert 'pip install -e ".[gpu]" in the mindvideo checkout' in NOT_INSTALLED


def test_the_onnxruntime_engine_runs_a_plugin_export_like_pytorch(plugin_export, export_ckpt, tmp_path):
    """A CPU-only host (onnxruntime backend) can use the same export folder as the TensorRT machine."""
    window, voxels = load_export(plugin_export).specs["fmri_encoder"].inputs[0].shape[1:]
    fmri = tmp_path / "fmri.npy"
    np.save(fmri, np.random.default_rng(0).standard_normal((1, window, voxels)).astype(np.float32))
    videos = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.npy"
        args = ["generate", "--checkpoint", export_ckpt, "--fmri", fmri, "--out", out, "--steps", 3, "--frames", 3]
        result = run_cli(*args, "--backend", backend, "--engine", plugin_export)
        assert result.exit_code == 0, result.output
        videos[backend] = np.load(out)
    assert videos["torch"].shape[2] == 3
    np.testing.assert_allclose(videos["onnxruntime"], videos["torch"], atol=1e-4)
