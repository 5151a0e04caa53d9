"""ONNX export of the tiny checkpoint: graphs, dynamic axes, parity with PyTorch, manifest, cache reuse."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from export_helpers import run_cli

from mindvideo.checkpoint import load_components, write_reference_layout
from mindvideo.export import ExportSettings, SpecOptions, export_onnx, inspect_checkpoint, load_export
from mindvideo.export import onnx as export_onnx_module
from mindvideo.export.modules import network_module
from mindvideo.export.verify import compare, ort_session, run_ort, run_torch

NETWORKS = ("fmri_encoder", "unet", "vae_decoder")


def _importable(*names: str) -> bool:
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


HAS_POLYGRAPHY = _importable("polygraphy.backend.onnx", "onnx_graphsurgeon")


def test_cli_writes_three_checked_graphs_and_a_table(exported):
    out, result = exported
    for name in NETWORKS:
        assert name in result.stdout and "exported" in result.stdout
        onnx.checker.check_model(str(out / "onnx" / f"{name}.onnx"))
    assert "max_rel" in result.stdout and "manifest.json" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    for name in NETWORKS:
        net = manifest["networks"][name]
        assert net["opset"] == 17 and net["precision"] == "fp32" and net["exporter"] == "torchscript"
        assert net["cleanup"] == ("polygraphy.fold_constants" if HAS_POLYGRAPHY else net["cleanup"])
        checks = net["verification"]["checks"]
        assert len(checks) == 2  # opt and min of the profile
        assert all(e["max_rel"] <= net["verification"]["tolerance"] for c in checks for e in c["outputs"].values())
    assert manifest["tools"]["torch"] == torch.__version__
    assert (out / "scheduler_config.json").is_file()
    table = json.loads((out.parent / "table.json").read_text())
    assert [row["name"] for row in table["networks"]] == list(NETWORKS)


@pytest.fixture(scope="module")
def torch_modules(export_ckpt):
    components = load_components(export_ckpt)
    return {name: network_module(name, components) for name in NETWORKS}


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_unet_and_decoder_match_pytorch_at_any_batch_and_frame_count(exported, torch_modules, frames):
    exported_model = load_export(exported[0])
    for name, dims in (
        ("unet", {"batch": 3 if frames == 3 else 1, "frames": frames}),
        ("vae_decoder", {"frames": frames}),
    ):
        spec, tol = exported_model.specs[name], exported_model.manifest["networks"][name]["verification"]["tolerance"]
        inputs = spec.sample_inputs(dims, seed=frames)
        got = run_ort(ort_session(exported_model.onnx_path(name)), spec, inputs)
        errors = compare(got, run_torch(torch_modules[name], spec, inputs))
        assert all(e.max_rel <= tol for e in errors.values()), (name, dims, errors)
        assert all(got[k].shape == spec.shapes(**dims)[k] for k in got)


def test_encoder_has_a_dynamic_batch(exported, torch_modules):
    exported_model = load_export(exported[0])
    spec = exported_model.specs["fmri_encoder"]
    session = ort_session(exported_model.onnx_path("fmri_encoder"))
    for batch in (1, 3):
        inputs = spec.sample_inputs({"batch": batch})
        errors = compare(run_ort(session, spec, inputs), run_torch(torch_modules["fmri_encoder"], spec, inputs))
        assert errors["cond"].max_rel < 5e-4


@pytest.mark.skipif(not HAS_POLYGRAPHY, reason="needs polygraphy + onnx-graphsurgeon (graph cleanup) installed")
def test_attention_exports_as_plain_ops_with_q_prescaled(exported):
    model = onnx.load(str(exported[0] / "onnx" / "unet.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Attention", "MultiHeadAttention", "ScaledDotProductAttention"}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 12  # 4 transformers × (sparse-causal, cross, temporal)
    for softmax in softmaxes:
        matmul = producers[softmax.input[0]]
        assert matmul.op_type == "MatMul"
        assert producers[matmul.input[0]].op_type == "Mul"  # Q · scale
        assert producers[matmul.input[1]].op_type == "Transpose"  # Kᵀ, not scaled again
    assert "Gather" in ops and "Concat" in ops  # the sparse-causal frame gather


def test_reexport_reuses_the_cache_without_loading_the_model(exported_copy, export_ckpt, monkeypatch):
    before = (exported_copy / "manifest.json").stat().st_mtime_ns
    stale = exported_copy.parent / ".out.staging-999999-killed"  # left by an export whose process died
    stale.mkdir()

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded: the cache was not used")

    monkeypatch.setattr(export_onnx_module, "load_network", no_load)
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", exported_copy)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("reused") == 3 and "nothing re-exported" in result.stdout
    assert (exported_copy / "manifest.json").stat().st_mtime_ns == before
    assert not stale.exists() and not list(exported_copy.parent.glob(".out.staging-*"))


def test_changed_checkpoint_changes_the_hash_and_reexports_only_that_network(exported_copy, export_ckpt, tmp_path):
    changed = shutil.copytree(export_ckpt, tmp_path / "changed")
    components = load_components(changed)
    with torch.no_grad():
        components["unet"].conv_out.bias.add_(0.5)
    components["unet"].save_pretrained(changed / "unet")
    old, new = inspect_checkpoint(export_ckpt), inspect_checkpoint(changed)
    assert old.sha256 != new.sha256
    assert old.weights_sha256["unet"] != new.weights_sha256["unet"]
    assert old.weights_sha256["vae_decoder"] == new.weights_sha256["vae_decoder"]
    old_unet_sha = json.loads((exported_copy / "manifest.json").read_text())["networks"]["unet"]["files"][0]["sha256"]
    result = export_onnx(changed, exported_copy)
    assert [n.status for n in result.networks] == ["reused", "exported", "reused"]
    manifest = load_export(exported_copy).manifest
    assert manifest["checkpoint"]["sha256"] == new.sha256
    assert manifest["networks"]["unet"]["files"][0]["sha256"] != old_unet_sha


def test_reference_layout_exports_the_same_function(export_ckpt, exported, tmp_path):
    reference = write_reference_layout(export_ckpt, tmp_path / "reference")
    result = export_onnx(reference, tmp_path / "out")
    assert [n.status for n in result.networks] == ["exported"] * 3
    ours, theirs = load_export(exported[0]), load_export(tmp_path / "out")
    spec = ours.specs["unet"]
    assert theirs.specs["unet"] == spec
    inputs = spec.sample_inputs({"batch": 2, "frames": 3}, seed=3)
    a = run_ort(ort_session(ours.onnx_path("unet")), spec, inputs)["noise_pred"]
    b = run_ort(ort_session(theirs.onnx_path("unet")), spec, inputs)["noise_pred"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_fp16_export_keeps_the_vae_in_fp32_and_reuses_it(export_ckpt, exported_copy):
    result = export_onnx(export_ckpt, exported_copy, ExportSettings(spec=SpecOptions(precision="fp16")))
    rows = {n.name: n for n in result.networks}
    assert rows["unet"].precision == "fp16" and rows["vae_decoder"].precision == "fp32"
    assert [r.status for r in rows.values()] == ["exported", "exported", "reused"]  # the fp32 VAE graph is unchanged
    assert all(r.max_rel <= r.tolerance for r in rows.values())
    model = onnx.load(str(exported_copy / "onnx" / "unet.onnx"), load_external_data=False)
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {
        "sample": onnx.TensorProto.FLOAT16,
        "timestep": onnx.TensorProto.FLOAT,
        "encoder_hidden_states": onnx.TensorProto.FLOAT16,
    }
