"""A distilled student through the engine Runtime: single pass with g bound into the denoiser, LCM's step noise by
the noise convention, on the C loop, the device loop and onnxruntime — against the PyTorch pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from engine_testing import make_student_checkpoint

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.engine.backends import OnnxRuntimeBackend, TorchBackend
from mindvideo.engine.runtime import Runtime
from mindvideo.errors import MindVideoError
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

LCM4 = GenerationConfig(num_frames=3, num_inference_steps=4, scheduler="lcm", guidance_scale=6.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("st") / "teacher", "tiny", num_voxels=64, init_scale=0.02)


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("st") / "student"
    return make_student_checkpoint(teacher, folder, guidance_range=(1.0, 8.0), schedulers=("lcm",))


@pytest.fixture(scope="module")
def student_export(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "exported"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(student), "--out", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def fmri():
    return np.random.default_rng(0).standard_normal((2, 2, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(student, fmri):
    return MindVideoPipeline.from_pretrained(student)(fmri, None, LCM4, output="float", progress=False)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_c_loop_of_a_student_equals_the_pipeline(student, fmri, reference):
    backend = TorchBackend(student)
    runtime = Runtime(backend, loop="c")
    calls = []
    denoise = backend.denoise
    backend.denoise = lambda x, t, cond, guidance=None: (
        calls.append((x.shape[0], guidance)) or denoise(x, t, cond, guidance)
    )
    video = runtime(fmri, None, LCM4, output="float")
    print(f"student LCM-4, torch + C loop vs pipeline: max rel {relative(video, reference):.2e}")
    assert relative(video, reference) <= 1e-5
    assert calls == [(2, 6.0)] * 4  # B rows, one pass per step, g bound in
    assert runtime.times.unet_evals == 4 and runtime.unet_evals(LCM4) == 4
    other = runtime(fmri, None, GenerationConfig(**{**LCM4.__dict__, "guidance_scale": 2.0}), output="float")
    assert relative(other, video) > 1e-4  # g reaches the student


def test_device_loop_of_a_student_equals_the_c_loop(student, fmri):
    """The steps a CUDA graph captures (static g and step-noise buffers), run eagerly on CPU, equal the C loop."""
    backend = TorchBackend(student)
    for steps in (1, 4):
        cfg = GenerationConfig(**{**LCM4.__dict__, "num_inference_steps": steps})
        c_loop = Runtime(backend, loop="c")(fmri, None, cfg, output="float")
        device_loop = Runtime(backend, loop="device")(fmri, None, cfg, output="float")
        print(f"student LCM-{steps}, device loop vs C loop: max rel {relative(device_loop, c_loop):.2e}")
        assert relative(device_loop, c_loop) <= 1e-5


def test_onnxruntime_student_equals_the_pipeline(student_export, fmri, reference):
    runtime = Runtime(OnnxRuntimeBackend(student_export))
    assert runtime.single_pass and runtime.loop == "c"
    runtime.check_generation(LCM4, batch=4)  # 4 clips are 4 UNet rows for a student: inside the 1..4 profile
    video = runtime(fmri, None, LCM4, output="float")
    print(f"student LCM-4, onnxruntime + C loop vs pipeline: max rel {relative(video, reference):.2e}")
    assert relative(video, reference) <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_student_refuses_schedulers_it_was_not_distilled_for(student, student_export, fmri, backend):
    made = TorchBackend(student) if backend == "torch" else OnnxRuntimeBackend(student_export)
    ddim = GenerationConfig(num_frames=2, num_inference_steps=2, scheduler="ddim", guidance_scale=6.0)
    with pytest.raises(MindVideoError, match="expected a scheduler among \\['lcm'\\]"):
        Runtime(made)(fmri, None, ddim)
    with pytest.raises(MindVideoError, match="expected a scheduler among \\['lcm'\\]"):
        Runtime(made).check_generation(ddim)


def test_teacher_counts_two_evaluations_per_step_and_refuses_g(teacher, fmri):
    backend = TorchBackend(teacher)
    runtime = Runtime(backend)
    cfg = GenerationConfig(num_frames=2, num_inference_steps=3, scheduler="ddim", guidance_scale=7.5)
    runtime(fmri, None, cfg)
    assert not runtime.single_pass and runtime.times.unet_evals == 6
    assert runtime.unet_evals(GenerationConfig(num_inference_steps=3, guidance_scale=1.0)) == 3
    x = np.zeros((2, 4, 2, 8, 8), np.float32)
    with pytest.raises(MindVideoError, match="expected no guidance input for the teacher UNet"):
        backend.denoise(x, 10, backend.encode(fmri), guidance=2.0)


def test_cli_generate_runs_a_student_on_every_backend(student, student_export, fmri, tmp_path):
    np.save(tmp_path / "f.npy", fmri)
    outs = {}
    for backend in ("pytorch", "torch", "onnxruntime"):
        out = tmp_path / f"{backend}.npy"
        args = ["generate", "--backend", backend, "--checkpoint", student, "--engine", student_export]
        args += ["--fmri", tmp_path / "f.npy", "--frames", 2, "--steps", 4, "--scheduler", "lcm"]
        args += ["--guidance", 5.0, "--out", out]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        outs[backend] = np.load(out)
    assert relative(outs["torch"], outs["pytorch"]) <= 1e-5
    assert relative(outs["onnxruntime"], outs["pytorch"]) <= 1e-4
