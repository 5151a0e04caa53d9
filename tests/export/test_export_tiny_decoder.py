"""A checkpoint with a tiny_decoder/ exports a fourth graph, ``tiny_decoder``, with the VAE decoder's inputs and
outputs, verified under onnxruntime like the others and reused or re-exported like them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mindvideo.export import export_onnx, load_export
from mindvideo.export.modules import TinyDecoderForExport, load_network
from mindvideo.export.verify import compare, ort_session, run_ort, run_torch
from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig


@pytest.fixture(scope="module")
def tiny_ckpt_export(export_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-export")
    ckpt = shutil.copytree(export_ckpt, root / "ckpt")
    vae_config = json.loads((ckpt / "vae" / "config.json").read_text())
    torch.manual_seed(5)
    decoder = TinyDecoder(TinyDecoderConfig.for_vae(vae_config, width=8, blocks=1))
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    decoder.save_pretrained(ckpt / "tiny_decoder")
    result = export_onnx(ckpt, root / "out")
    return ckpt, root / "out", result


def test_tiny_decoder_graph_is_exported_and_verified(tiny_ckpt_export):
    ckpt, out, result = tiny_ckpt_export
    assert [(n.name, n.status) for n in result.networks] == [
        ("fmri_encoder", "exported"),
        ("unet", "exported"),
        ("vae_decoder", "exported"),
        ("tiny_decoder", "exported"),
    ]
    exported = load_export(out)
    tiny, vae = exported.specs["tiny_decoder"], exported.specs["vae_decoder"]
    assert (tiny.inputs, tiny.outputs, tiny.axes) == (vae.inputs, vae.outputs, vae.axes)
    entry = exported.manifest["networks"]["tiny_decoder"]
    assert len(entry["verification"]["checks"]) == 2
    module = load_network("tiny_decoder", ckpt)
    assert isinstance(module, TinyDecoderForExport)
    scaling = json.loads((ckpt / "vae" / "config.json").read_text())["scaling_factor"]
    assert module.scaling_factor == pytest.approx(scaling)
    session = ort_session(exported.onnx_path("tiny_decoder"))
    for frames in (1, 5):
        inputs = tiny.sample_inputs({"frames": frames}, seed=frames)
        got = run_ort(session, tiny, inputs)
        errors = compare(got, run_torch(module, tiny, inputs))
        assert errors["images"].max_rel <= entry["verification"]["tolerance"], errors
        assert got["images"].shape == tiny.shapes(frames=frames)["images"]
        assert 0.0 <= got["images"].min() <= got["images"].max() <= 1.0


def test_reexport_reuses_it_and_a_new_vae_scaling_re_exports_it(tiny_ckpt_export, tmp_path):
    ckpt, out, _ = tiny_ckpt_export
    again = export_onnx(ckpt, out)
    assert [n.status for n in again.networks] == ["reused"] * 4 and not again.written
    changed = shutil.copytree(ckpt, tmp_path / "changed")
    config = json.loads((changed / "vae" / "config.json").read_text())
    (changed / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.3}))
    copy = shutil.copytree(out, tmp_path / "out")
    result = export_onnx(changed, copy)
    assert {n.name: n.status for n in result.networks} == {
        "fmri_encoder": "reused",
        "unet": "reused",
        "vae_decoder": "exported",
        "tiny_decoder": "exported",
    }
    # without the tiny decoder the export is the three networks again, and the stale graph is removed
    shutil.rmtree(changed / "tiny_decoder")
    result = export_onnx(changed, copy)
    assert [n.name for n in result.networks] == ["fmri_encoder", "unet", "vae_decoder"]
    assert not (copy / "onnx" / "tiny_decoder.onnx").exists()
    assert "tiny_decoder" not in load_export(copy).manifest["networks"]
