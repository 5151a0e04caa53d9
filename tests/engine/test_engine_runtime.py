"""The engine Runtime on every backend that runs here, against the PyTorch pipeline, and its error paths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.engine.backends import OnnxRuntimeBackend, TorchBackend
from mindvideo.engine.runtime import Runtime
from mindvideo.errors import MindVideoError
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

CFG = GenerationConfig(num_frames=3, num_inference_steps=3, scheduler="dpm", guidance_scale=12.5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("rt") / "ckpt", "tiny", num_voxels=64, init_scale=0.02)


@pytest.fixture(scope="module")
def engine_dir(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "exported"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def fmri():
    return np.random.default_rng(0).standard_normal((2, 2, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(ckpt, fmri):
    return MindVideoPipeline.from_pretrained(ckpt)(fmri, None, CFG, output="float", progress=False)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_torch_backend_equals_the_pipeline(ckpt, fmri, reference):
    runtime = Runtime(TorchBackend(ckpt))
    video = runtime(fmri, None, CFG, output="float")
    print(f"torch + C loop vs pipeline: max rel {relative(video, reference):.2e}")
    assert video.shape == reference.shape and relative(video, reference) <= 1e-5
    assert runtime.times.steps == 3 and runtime.times.total > 0


@pytest.mark.parametrize("scheduler", ["dpm", "ddim", "euler"])
def test_device_loop_equals_the_c_loop(ckpt, fmri, scheduler):
    """``loop="device"``: the steps a CUDA graph captures (GraphedLoop.run_eager, fused torch update on CPU), driven
    by the Runtime, equal the C loop over the same backend."""
    cfg = GenerationConfig(num_frames=3, num_inference_steps=3, scheduler=scheduler, guidance_scale=7.5)
    backend = TorchBackend(ckpt)
    c_loop, device_loop = Runtime(backend, loop="c"), Runtime(backend, loop="device")
    assert Runtime(backend).loop == "c"  # auto on CPU
    a, b = c_loop(fmri, None, cfg, output="float"), device_loop(fmri, None, cfg, output="float")
    print(f"device loop vs C loop ({scheduler}): max rel {relative(b, a):.2e}")
    assert relative(b, a) <= 1e-5


def test_loop_choices_are_checked(ckpt, engine_dir):
    with pytest.raises(MindVideoError, match="CUDA device for --loop graph"):
        Runtime(TorchBackend(ckpt), loop="graph")
    with pytest.raises(MindVideoError, match="device UNet"):
        Runtime(OnnxRuntimeBackend(engine_dir), loop="device")
    with pytest.raises(MindVideoError, match="loop among"):
        Runtime(TorchBackend(ckpt), loop="fast")


def test_onnxruntime_backend_equals_the_pipeline(engine_dir, fmri, reference):
    video = Runtime(OnnxRuntimeBackend(engine_dir))(fmri, None, CFG, output="float")
    print(f"onnxruntime + C loop vs pipeline: max rel {relative(video, reference):.2e}")
    assert relative(video, reference) <= 1e-4


def test_cli_backends_agree(ckpt, engine_dir, fmri, tmp_path):
    np.save(tmp_path / "f.npy", fmri)
    outs = {}
    for backend in ("pytorch", "torch", "onnxruntime"):
        out = tmp_path / f"{backend}.npy"
        args = [
            "generate",
            "--backend",
            backend,
            "--checkpoint",
            ckpt,
            "--engine",
            engine_dir,
            "--fmri",
            tmp_path / "f.npy",
            "--frames",
            2,
            "--steps",
            2,
            "--out",
            out,
        ]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        outs[backend] = np.load(out)
    assert relative(outs["torch"], outs["pytorch"]) <= 1e-5
    assert relative(outs["onnxruntime"], outs["pytorch"]) <= 1e-4


def test_cli_names_the_negative_an_export_uses(ckpt, engine_dir, fmri, tmp_path):
    """Without --checkpoint an export's backend reads no data transform: the negative is the mean of the inputs, and
    generate says so on the console and in OUT.json; the video is the one that negative gives. An explicit --dtype
    equal to the export's precision is accepted."""
    np.save(tmp_path / "f.npy", fmri)
    out = tmp_path / "x.npy"
    args = ["generate", "--backend", "onnxruntime", "--engine", engine_dir, "--fmri", tmp_path / "f.npy", "--dtype"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "fp32", "--frames", 2, "--steps", 2, "--out", out]])
    assert result.exit_code == 0, result.output
    line = "negative condition: the mean of the input windows; without --checkpoint no data_transform/ is read"
    assert line in result.output
    record = json.loads((tmp_path / "x.npy.json").read_text())
    assert record["negative_condition"]["source"] == "input_mean" and record["model"]["engine"] == str(engine_dir)
    assert (record["settings"]["dtype"], record["settings"]["device"]) == ("fp32", "cpu")
    cfg = GenerationConfig(num_frames=2, num_inference_steps=2)
    expected = Runtime(OnnxRuntimeBackend(engine_dir))(fmri, fmri.mean(0), cfg, output="float")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    again = [*args[:-1], "--checkpoint", ckpt, "--frames", 1, "--steps", 1, "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in again])
    assert result.exit_code == 0, result.output
    assert "the mean of the input windows (the checkpoint has no data_transform/)" in result.output


def test_shape_outside_the_profile_is_refused(engine_dir, fmri):
    runtime = Runtime(OnnxRuntimeBackend(engine_dir))
    with pytest.raises(MindVideoError, match="profile"):
        runtime(fmri, None, GenerationConfig(num_frames=40, num_inference_steps=1))  # frames max is 16


@pytest.mark.parametrize("case", ["tensorrt", "broken engine", "no engine"])
def test_backend_errors_exit_2(engine_dir, fmri, tmp_path, case):
    np.save(tmp_path / "f.npy", fmri)
    engine = engine_dir
    if case == "broken engine":
        engine = shutil.copytree(engine_dir, tmp_path / "broken")
        graph = next(engine.rglob("unet*.onnx"))
        graph.write_bytes(graph.read_bytes()[:100])
    backend = "tensorrt" if case == "tensorrt" else "onnxruntime"
    args = ["generate", "--backend", backend, "--fmri", str(tmp_path / "f.npy"), "--out", str(tmp_path / "x.npy")]
    if case != "no engine":
        args += ["--engine", str(engine)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    expected = {"tensorrt": "TensorRT is not installed", "broken engine": "unet", "no engine": "--engine"}[case]
    assert expected in result.output and not (tmp_path / "x.npy").exists()


def test_tensorrt_buffers_use_the_dense_prefix():
    """TensorRT reads/writes a packed tensor of the actual shape at a bound address: smaller-than-max shapes are the
    buffer's dense prefix, not a strided slice of it."""
    from mindvideo.engine.tensorrt_backend import dense

    buffer = torch.arange(4 * 4 * 16 * 2 * 2, dtype=torch.float32).view(4, 4, 16, 2, 2)
    view = dense(buffer, (2, 4, 6, 2, 2))
    assert view.is_contiguous() and view.data_ptr() == buffer.data_ptr()
    assert torch.equal(view.flatten(), torch.arange(view.numel(), dtype=torch.float32))
    assert not buffer[:2, :, :6].is_contiguous()  # what the old slicing handed TensorRT
