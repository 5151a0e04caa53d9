"""Every bad-input path of the export: one stderr line, exit code 2, nothing written."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from export_helpers import run_cli

from mindvideo.errors import MindVideoError
from mindvideo.export import check_onnx_file, load_export

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr  # progress lines may precede
    line = errors[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in line, line


def test_missing_checkpoint_folder(tmp_path):
    result = run_cli("export", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "out")
    assert_user_error(result, "expected a checkpoint folder")
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_a_component(export_ckpt, tmp_path):
    broken = shutil.copytree(export_ckpt, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    result = run_cli("export", "--checkpoint", broken, "--out", tmp_path / "out")
    assert_user_error(result, "['unet'] missing")
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_weights(export_ckpt, tmp_path):
    broken = shutil.copytree(export_ckpt, tmp_path / "broken")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    result = run_cli("export", "--checkpoint", broken, "--out", tmp_path / "out")
    assert_user_error(result, "weight file")
    assert not (tmp_path / "out").exists()


def test_out_folder_with_unrelated_files_is_refused(export_ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", tmp_path / "out")
    assert_user_error(result, "empty or a previous export", "'notes.txt'")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("out", [".", ".."])
def test_out_the_current_folder_or_above_is_refused(export_ckpt, tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", out)
    assert_user_error(result, "other than the current folder")
    assert not list(work.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no staging folder


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--precision", "bf16"), "use --format trt"),
        (("--vae-precision", "bf16"), "use --format trt"),
        (("--opset", "13"), "--opset between 17 and 20"),
        (("--frames", "8:2:1"), "frames axis"),
        (("--height", "100"), "divisible by 8"),
    ],
)
def test_bad_options(export_ckpt, tmp_path, args, fragment):
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", tmp_path / "out", *args)
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_failed_verification_writes_nothing(export_ckpt, tmp_path):
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", tmp_path / "out", "--rtol", "0")
    assert_user_error(result, "expected onnxruntime to match PyTorch", "nothing was written")
    assert not list(tmp_path.iterdir())  # no out/, no staging folder


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the path without it")
def test_trt_without_tensorrt_exits_2_and_writes_nothing(export_ckpt, tmp_path):
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", tmp_path / "out", "--format", "trt")
    assert_user_error(result, 'TensorRT is not installed: pip install -e ".[gpu]" in the mindvideo checkout')
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the path without it")
def test_build_engines_without_tensorrt_leaves_the_export_untouched(exported_copy):
    from mindvideo.export import BuildConfig, build_engines

    before = (exported_copy / "manifest.json").read_bytes()
    with pytest.raises(MindVideoError, match="TensorRT is not installed"):
        build_engines(exported_copy, {"unet": BuildConfig("fp16")})
    assert (exported_copy / "manifest.json").read_bytes() == before
    assert not (exported_copy / "engines").exists()


def test_truncated_graph_is_detected_on_load(exported_copy):
    graph = exported_copy / "onnx" / "unet.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(MindVideoError, match=r"unet\.onnx.*truncated.*re-run `mindvideo export`"):
        load_export(exported_copy)
    with pytest.raises(MindVideoError, match="valid ONNX graph"):
        check_onnx_file(graph)


def test_corrupt_graph_is_detected_on_load(exported_copy):
    graph = exported_copy / "onnx" / "vae_decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(MindVideoError, match=r"vae_decoder\.onnx.*corrupt"):
        load_export(exported_copy)
    load_export(exported_copy, hash_check=False)  # size-only check passes: a flipped byte needs the hash


def test_missing_graph_and_bad_manifest_are_detected(exported_copy):
    (exported_copy / "onnx" / "fmri_encoder.onnx").unlink()
    with pytest.raises(MindVideoError, match="no such file"):
        load_export(exported_copy)
    (exported_copy / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(MindVideoError, match="mindvideo-export v1"):
        load_export(exported_copy)
    (exported_copy / "manifest.json").unlink()
    with pytest.raises(MindVideoError, match="run `mindvideo export"):
        load_export(exported_copy)


def test_reexport_repairs_a_damaged_graph(exported_copy, export_ckpt):
    graph = exported_copy / "onnx" / "fmri_encoder.onnx"
    graph.write_bytes(b"garbage")
    result = run_cli("export", "--checkpoint", export_ckpt, "--out", exported_copy)
    assert result.exit_code == 0, result.output
    assert "fmri_encoder  exported" in result.stdout and result.stdout.count("reused") == 2
    load_export(exported_copy)
