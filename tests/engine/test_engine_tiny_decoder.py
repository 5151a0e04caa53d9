"""``--decoder tiny`` on the engine backends: the Runtime over the torch backend (the checkpoint's TinyDecoder) and
onnxruntime (the export's ``tiny_decoder`` graph) equals the PyTorch pipeline's tiny-decoded video; a checkpoint or
export folder without a tiny decoder exits 2 with nothing written; the TensorRT backend's refusal and engine memory
placement (TensorRT itself does not run here)."""

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
from mindvideo.engine.tensorrt_backend import TensorRTBackend
from mindvideo.errors import MindVideoError
from mindvideo.export import load_export
from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

CFG = GenerationConfig(num_frames=3, num_inference_steps=3, scheduler="dpm", guidance_scale=12.5, decoder="tiny")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random checkpoint with a tiny_decoder/ (perturbed, so its output depends on every layer)."""
    path = build_random_checkpoint(tmp_path_factory.mktemp("td") / "ckpt", "tiny", num_voxels=64, init_scale=0.02)
    vae_config = json.loads((path / "vae" / "config.json").read_text())
    torch.manual_seed(7)
    decoder = TinyDecoder(TinyDecoderConfig.for_vae(vae_config, width=8, blocks=1))
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    decoder.save_pretrained(path / "tiny_decoder")
    return path


@pytest.fixture(scope="module")
def engine_dir(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("td") / "exported"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "tiny_decoder" in load_export(out).specs
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
    print(f"torch + C loop + tiny decoder vs pipeline: max rel {relative(video, reference):.2e}")
    assert video.shape == reference.shape and relative(video, reference) <= 1e-5
    vae = runtime(fmri, None, GenerationConfig(**{**CFG.__dict__, "decoder": "vae"}), output="float")
    assert np.abs(vae - video).max() > 0.05  # the same latents decoded two ways: the decoder really switched


def test_onnxruntime_backend_equals_the_pipeline(engine_dir, fmri, reference):
    backend = OnnxRuntimeBackend(engine_dir)
    assert "tiny_decoder" not in backend.sessions  # a session only when asked for
    video = Runtime(backend)(fmri, None, CFG, output="float")
    print(f"onnxruntime + C loop + tiny decoder vs pipeline: max rel {relative(video, reference):.2e}")
    assert video.shape == reference.shape and relative(video, reference) <= 1e-4


def _generate(backend: str, ckpt, engine, fmri_file, out, *extra):
    args = ["generate", "--backend", backend, "--checkpoint", ckpt, "--fmri", fmri_file, "--frames", 2]
    args += ["--steps", 2, "--decoder", "tiny", "--out", out, *extra]
    if engine is not None:
        args += ["--engine", engine]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_backends_agree(ckpt, engine_dir, fmri, tmp_path):
    np.save(tmp_path / "f.npy", fmri)
    outs = {}
    for backend in ("pytorch", "torch", "onnxruntime"):
        result = _generate(backend, ckpt, engine_dir, tmp_path / "f.npy", tmp_path / f"{backend}.npy")
        assert result.exit_code == 0, result.output
        outs[backend] = np.load(tmp_path / f"{backend}.npy")
    assert relative(outs["torch"], outs["pytorch"]) <= 1e-5
    assert relative(outs["onnxruntime"], outs["pytorch"]) <= 1e-4


@pytest.fixture(scope="module")
def without_tiny(ckpt, engine_dir, tmp_path_factory):
    """The same checkpoint without tiny_decoder/, and its export (what exporting it writes: no tiny_decoder)."""
    root = tmp_path_factory.mktemp("no-td")
    plain = shutil.copytree(ckpt, root / "ckpt", ignore=shutil.ignore_patterns("tiny_decoder"))
    out = shutil.copytree(engine_dir, root / "exported")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(plain), "--out", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "tiny_decoder" not in load_export(out).specs
    return plain, out


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_missing_tiny_decoder_exits_2_and_writes_nothing(without_tiny, fmri, tmp_path, backend):
    plain, exported = without_tiny
    np.save(tmp_path / "f.npy", fmri)
    out = tmp_path / "clips" / "x.npy"
    result = _generate(backend, plain, exported if backend == "onnxruntime" else None, tmp_path / "f.npy", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "mindvideo train tiny-decoder" in result.output and "--decoder vae" in result.output
    if backend == "torch":
        assert result.output.startswith("error: expected a tiny_decoder/ folder in the checkpoint")
    else:
        assert result.output.startswith(f"error: expected a tiny_decoder graph in the export folder {exported}")
        assert "re-export (`mindvideo export --checkpoint CKPT" in result.output
    assert not out.parent.exists()


def test_runtime_reports_a_missing_tiny_decoder_before_any_work(without_tiny, fmri):
    runtime = Runtime(OnnxRuntimeBackend(without_tiny[1]))
    with pytest.raises(MindVideoError, match="tiny_decoder graph"):
        runtime.check_generation(CFG)
    runtime.backend.encode = lambda _: pytest.fail("encoded before the decoder was checked")
    with pytest.raises(MindVideoError, match="tiny_decoder graph"):
        runtime(fmri, None, CFG)
    with pytest.raises(MindVideoError, match=r"expected a decoder among \['vae', 'tiny'\]"):
        runtime.check_generation(GenerationConfig(decoder="taesd"))


def test_stream_engine_backend_without_tiny_decoder_exits_2(without_tiny, tmp_path):
    (tmp_path / "in").mkdir()
    out = tmp_path / "live.mp4"
    plain, exported = without_tiny
    args = ["stream", "--checkpoint", plain, "--backend", "onnxruntime", "--engine", exported, "--decoder", "tiny"]
    args += ["--source", f"folder:{tmp_path / 'in'}", "--sink", f"file:{out}"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and "expected a tiny_decoder graph in the export folder" in result.output
    assert not out.exists()


# ------------------------------------------------------------------------ TensorRT (its logic only: no TensorRT here)


class _Engine:
    def __init__(self, size: int):
        self.device_memory_size_v2 = size


class _Context:
    def __init__(self):
        self.memory = None

    def set_device_memory(self, address: int, size: int) -> None:
        self.memory = (address, size)


def _trt_backend(engine_dir, tiny_size: int) -> TensorRTBackend:
    """A TensorRTBackend whose arena is set up and whose ``_load`` makes a stand-in engine of ``tiny_size`` bytes."""
    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.device, backend.exported = torch.device("cpu"), load_export(engine_dir)
    backend.specs = backend.exported.specs
    backend.engines = {name: _Engine(1000) for name in ("fmri_encoder", "unet", "vae_decoder")}
    backend.contexts = {name: _Context() for name in backend.engines}
    backend._own_memory = {}
    backend._arena = backend._shared_arena()

    def load(name):
        backend.engines[name], backend.contexts[name] = _Engine(tiny_size), _Context()

    backend._load = load
    return backend


@pytest.mark.parametrize("tiny_size", [400, 5000])
def test_tensorrt_tiny_engine_memory(engine_dir, tiny_size):
    """The tiny decoder's engine shares the activation arena when it fits (the arena never moves), else gets its own
    aligned memory; loaded once."""
    backend = _trt_backend(engine_dir, tiny_size)
    arena = backend.contexts["unet"].memory
    assert arena == (backend._arena_address, 1000) and arena[0] % 256 == 0
    backend.check_decoder("vae")
    assert "tiny_decoder" not in backend.contexts
    backend.check_decoder("tiny")
    address, size = backend.contexts["tiny_decoder"].memory
    if tiny_size <= 1000:
        assert (address, size) == arena and not backend._own_memory
    else:
        own = backend._own_memory["tiny_decoder"]
        assert size == tiny_size and address % 256 == 0 and own.data_ptr() <= address < own.data_ptr() + 256
    context = backend.contexts["tiny_decoder"]
    backend.check_decoder("tiny")
    assert backend.contexts["tiny_decoder"] is context and backend.contexts["unet"].memory == arena


def test_tensorrt_refuses_a_missing_tiny_decoder_graph(without_tiny):
    backend = _trt_backend(without_tiny[1], 10)
    with pytest.raises(MindVideoError, match=r"tiny_decoder graph in the export folder .*--format trt"):
        backend.check_decoder("tiny")
    with pytest.raises(MindVideoError, match="expected a decoder among"):
        backend.check_decoder("taesd")


def test_decode_calls_take_the_tiny_factor_within_the_exported_profile(ckpt, fmri, tmp_path):
    """The tiny decoder decodes tiny_decode_chunk, by default TINY_CHUNK_FACTOR × decode_chunk, frames per call, the
    VAE decode_chunk; never more than an exported decoder's profile takes (here 4 frame latents, for 2 clips × 3
    frames = 6)."""
    from dataclasses import replace

    from mindvideo.export import Axis, ExportSettings, SpecOptions, export_onnx
    from mindvideo.pipeline import TINY_CHUNK_FACTOR

    export_onnx(ckpt, tmp_path / "small", ExportSettings(spec=SpecOptions(frames=Axis(1, 3, 4))))
    backends = {"torch": TorchBackend(ckpt), "onnxruntime": OnnxRuntimeBackend(tmp_path / "small")}
    cases = [  # backend, decoder, decode_chunk, tiny_decode_chunk → the frames of each decode call
        ("torch", "tiny", 1, None, [TINY_CHUNK_FACTOR, 6 - TINY_CHUNK_FACTOR]),
        ("torch", "vae", 1, None, [1] * 6),
        ("torch", "tiny", 16, None, [6]),
        ("torch", "tiny", 16, 2, [2, 2, 2]),
        ("onnxruntime", "tiny", 16, None, [4, 2]),  # 64 wanted, the profile's 4 taken
        ("onnxruntime", "vae", 16, None, [4, 2]),
    ]
    for name, decoder, chunk, tiny_chunk, sizes in cases:
        backend, seen = backends[name], []

        def recording(latents, which="vae", backend=backend, seen=seen):
            seen.append(len(latents))
            return type(backend).decode(backend, latents, which)

        backend.decode = recording
        cfg = replace(CFG, decoder=decoder, decode_chunk=chunk, tiny_decode_chunk=tiny_chunk)
        video = Runtime(backend)(fmri, None, cfg, output="float")
        del backend.decode
        assert seen == sizes, (name, decoder, chunk, tiny_chunk)
        assert video.shape[:3] == (2, 3, 3)
