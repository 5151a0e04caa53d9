"""Export of a student UNet: its ``guidance`` graph input (dynamic batch), parity with PyTorch under onnxruntime,
what the manifest records of it, and a teacher's spec left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_helpers import make_student_checkpoint, run_cli

from mindvideo.checkpoint import load_components
from mindvideo.engine.backends import OnnxRuntimeBackend, UNetFacts
from mindvideo.errors import MindVideoError
from mindvideo.export import load_export
from mindvideo.export.modules import network_module
from mindvideo.export.spec import ExportSpec, NetworkShapes, SpecOptions, build_specs
from mindvideo.export.verify import compare, ort_session, run_ort, run_torch

TEACHER_INPUTS = ["sample", "timestep", "encoder_hidden_states"]


@pytest.fixture(scope="module")
def student_ckpt(export_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("student") / "ckpt"
    return make_student_checkpoint(export_ckpt, folder, guidance_range=(1.0, 8.0), schedulers=("lcm",))


@pytest.fixture(scope="module")
def student_export(student_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("student-export") / "out"
    result = run_cli("export", "--checkpoint", student_ckpt, "--out", out, "--format", "onnx")
    assert result.exit_code == 0, result.output
    return out


def test_student_unet_has_a_guidance_input_and_the_manifest_says_what_it_is(student_export):
    manifest = json.loads((student_export / "manifest.json").read_text())
    unet = manifest["networks"]["unet"]
    inputs = {t["name"]: t for t in unet["spec"]["inputs"]}
    assert list(inputs) == [*TEACHER_INPUTS, "guidance"]
    assert inputs["guidance"]["shape"] == ["batch"] and inputs["guidance"]["dtype"] == "float32"
    assert inputs["guidance"]["sample_range"] == [1.0, 8.0]  # verified where it was distilled
    assert unet["spec"]["student"] == {"guidance_range": [1.0, 8.0], "schedulers": ["lcm"]}
    checks = unet["verification"]["checks"]
    assert len(checks) == 2 and all(e["max_rel"] <= 1e-4 for c in checks for e in c["outputs"].values())
    facts = UNetFacts.from_spec(load_export(student_export).specs["unet"])
    assert facts == UNetFacts(True, (1.0, 8.0), ("lcm",))


@pytest.mark.parametrize(("batch", "frames"), [(1, 1), (3, 3), (4, 8)])
def test_student_graph_matches_pytorch_at_any_batch_and_g(student_export, student_ckpt, batch, frames):
    exported = load_export(student_export)
    spec = exported.specs["unet"]
    module = network_module("unet", load_components(student_ckpt))
    session = ort_session(exported.onnx_path("unet"))
    outputs = []
    for g in (1.5, 7.0):
        inputs = spec.sample_inputs({"batch": batch, "frames": frames}, seed=batch)
        inputs["guidance"] = torch.full((batch,), g)
        got, want = run_ort(session, spec, inputs), run_torch(module, spec, inputs)
        error = compare(got, want)["noise_pred"]
        print(f"student unet batch {batch} frames {frames} g {g}: max_rel {error.max_rel:.2e}")
        assert error.max_rel <= 1e-4
        outputs.append(want["noise_pred"])
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3 * np.abs(outputs[0]).max()  # g reaches the graph


def test_onnxruntime_backend_feeds_g(student_export, student_ckpt):
    backend = OnnxRuntimeBackend(student_export)
    assert backend.guidance_input
    module = network_module("unet", load_components(student_ckpt))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 8, 8), dtype=np.float32)
    cond = rng.standard_normal((2, 8, 32), dtype=np.float32)
    eps = backend.denoise(x, 499, cond, guidance=5.0)
    with torch.no_grad():
        want = module(torch.from_numpy(x), torch.full((2,), 499.0), torch.from_numpy(cond), torch.full((2,), 5.0))
    assert np.abs(eps - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max()
    with pytest.raises(MindVideoError, match="expected a guidance input g for the student UNet of this export"):
        backend.denoise(x, 499, cond)


def test_teacher_spec_is_unchanged(exported):
    shapes = NetworkShapes(2, 128, 8, 32, 4, 4, 8, 3, 8)
    unet = build_specs(shapes, SpecOptions())["unet"]
    assert unet.input_names == TEACHER_INPUTS and "student" not in unet.to_dict()
    assert UNetFacts.from_spec(unet) == UNetFacts()
    spec = load_export(exported[0]).specs["unet"]
    assert spec.input_names == TEACHER_INPUTS and spec.student is None


def test_student_spec_round_trips_and_defaults_its_g_range():
    shapes = NetworkShapes(2, 128, 8, 32, 4, 4, 8, 3, 8, guidance_input=True)
    unet = build_specs(shapes, SpecOptions())["unet"]
    assert unet.input_names == [*TEACHER_INPUTS, "guidance"] and unet.inputs[3].sample_range == (1.0, 10.0)
    assert unet.student == {"guidance_range": None, "schedulers": None}
    again = ExportSpec.from_dict(json.loads(json.dumps(unet.to_dict())))
    assert again.to_dict() == unet.to_dict() and unet.dynamic_axes()["guidance"] == {0: "batch"}
    assert UNetFacts.from_spec(again) == UNetFacts(True)
