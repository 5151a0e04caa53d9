"""Runtime backends: the three networks behind one interface (``encode`` / ``denoise`` / ``decode``, see
:func:`make_backend`), on host float32 buffers: :class:`TorchBackend`, :class:`OnnxRuntimeBackend` and the TensorRT
backend (:mod:`.tensorrt_backend`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.errors import MindVideoError

from .backend_common import (
    Geometry,
    UNetFacts,
    check_decoder_graph,
    check_guidance,
    check_profile,
    decoder_network,
    guidance_rows,
)
from .tensorrt_backend import TensorRTBackend

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_RETAIN_BYTES = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Keep the memory of freed tensors in this process for the next allocation (glibc only; once per process).

    PyTorch's CPU allocator hands every tensor to ``malloc``; by default glibc returns each freed block above 128 KiB
    to the kernel, so every UNet pass page-faults its activations back in (~6,000 page faults per pass of the demo
    student at 60 frames, 10–15 % of its time on one thread). Raising the mmap and trim thresholds to 1 GiB keeps
    those blocks for reuse; the process then holds on to its peak heap (what a streaming engine uses anyway).
    Returns whether the thresholds were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, _RETAIN_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _RETAIN_BYTES))
    log.debug("malloc thresholds %s", "raised to 1 GiB" if done else "unchanged (mallopt refused)")
    return done


class TorchBackend:
    """PyTorch modules from a checkpoint folder, on ``device`` in ``dtype`` (the VAE stays fp32 under fp16; the tiny
    decoder, ``CKPT/tiny_decoder`` read on first use, takes the VAE's dtype).

    ``freeze`` (default: on the CPU without ``compile``; not with ``compile``): ``denoise`` runs the UNet as a frozen
    TorchScript trace, one per input shape (:class:`FrozenUNets`): no Python between its ops, so the demo student at
    60 frames on one thread takes 64 instead of 75 ms per pass (measured alone). The eager module is what the device
    loop and ``device_unet`` call."""

    name = "torch"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        compile: bool = False,
        freeze: bool | None = None,
    ):
        from mindvideo.checkpoint import load_components
        from mindvideo.export.modules import network_module
        from mindvideo.pipeline import DTYPES, move

        if freeze and compile:
            raise MindVideoError("expected freeze or compile, not both", "freeze=True, compile=True", "pick one")
        parts = load_components(checkpoint)
        self.checkpoint, self.compiled = Path(checkpoint), compile
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        if self.device.type == "cpu":
            retain_freed_memory()
        self.encoder = network_module("fmri_encoder", parts).to(self.device, self.dtype)
        self.unet = network_module("unet", parts).to(self.device, self.dtype)
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        self.decoder = move(network_module("vae_decoder", parts), self.device, vae_dtype)
        self.tiny_decoder: torch.nn.Module | None = None
        self.vae_scaling = float(getattr(parts["vae"].config, "scaling_factor", None) or 0.18215)
        self.scheduler_config = parts["scheduler_config"]
        self.unet_config = parts["unet"].config
        cfg = self.unet_config
        self.unet_facts = UNetFacts(cfg.guidance_embedding, cfg.guidance_range, cfg.schedulers)
        self.encoder_config = parts["fmri_encoder"].config
        vae_factor = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
        size = self.unet_config.sample_size
        self.geometry = Geometry(
            self.encoder_config.window_size,
            self.encoder_config.num_voxels,
            self.unet_config.in_channels,
            (size, size),
            vae_factor,
        )
        if compile:
            self.name = "torch-compile"
            self.unet = torch.compile(self.unet, dynamic=False)
            self.decoder = torch.compile(self.decoder, dynamic=False)
        if freeze is None:
            freeze = self.device.type == "cpu" and not compile
        self.frozen = FrozenUNets(self.unet) if freeze else None

    @torch.inference_mode()
    def encode(self, fmri: np.ndarray) -> torch.Tensor:
        return self.encoder(torch.from_numpy(fmri).to(self.device, self.dtype))

    @property
    def guidance_input(self) -> bool:
        """Whether the UNet is a student: one pass per step with g as an input (``denoise(..., guidance=g)``)."""
        return self.unet_facts.guidance_embedding

    @torch.inference_mode()
    def denoise(self, x: np.ndarray, t: float, cond: torch.Tensor, guidance=None) -> np.ndarray:
        check_guidance(self.unet_facts, guidance, "this checkpoint")
        sample = torch.from_numpy(x).to(self.device, self.dtype)
        timestep = torch.full((x.shape[0],), float(t), device=self.device)
        g = None if guidance is None else torch.tensor(guidance_rows(guidance, x.shape[0]), device=self.device)
        inputs = (sample, timestep, cond) if g is None else (sample, timestep, cond, g)
        eps = self.frozen(*inputs) if self.frozen is not None else self.unet(*inputs)
        return eps.float().contiguous().cpu().numpy()

    @property
    def unet_dtype(self) -> torch.dtype:
        return self.dtype

    def device_unet(
        self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet on device tensors (what :class:`~mindvideo.engine.GraphedLoop` steps and captures)."""
        return self.unet(sample, timestep, cond) if guidance is None else self.unet(sample, timestep, cond, guidance)

    def check_decoder(self, decoder: str) -> None:
        """Make ``decoder`` ready: the tiny decoder is read from ``CKPT/tiny_decoder`` on first use (a
        :class:`MindVideoError` saying how to train one when the checkpoint has none)."""
        if decoder_network(decoder) != "tiny_decoder" or self.tiny_decoder is not None:
            return
        from mindvideo.export.modules import network_module
        from mindvideo.models.tiny_decoder import load_tiny_decoder
        from mindvideo.pipeline import move

        parts = {"tiny_decoder": load_tiny_decoder(self.checkpoint), "vae_scaling": self.vae_scaling}
        module = move(network_module("tiny_decoder", parts), self.device, next(self.decoder.parameters()).dtype)
        self.tiny_decoder = torch.compile(module, dynamic=False) if self.compiled else module

    @torch.inference_mode()
    def decode(self, latents: np.ndarray, decoder: str = "vae") -> np.ndarray:
        self.check_decoder(decoder)
        module = self.tiny_decoder if decoder == "tiny" else self.decoder
        dtype = next(module.parameters()).dtype
        return module(torch.from_numpy(latents).to(self.device, dtype)).float().contiguous().cpu().numpy()

    def info(self) -> dict[str, Any]:
        info = {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}
        info["frozen_unet"] = self.frozen is not None  # per-signature fallbacks: self.frozen.failed
        return info


class FrozenUNets:
    """The UNet as frozen TorchScript traces for inference, one per input signature (shapes, dtypes, whether g is
    given), the most recent ``keep`` kept: ``torch.jit.trace`` → ``torch.jit.freeze`` (weights folded in as
    constants, sharing the parameters' storage; ``torch.jit.optimize_for_inference``'s oneDNN rewrites measured slower
    here, 67 against 64 ms per demo-student pass). What it saves is the Python around ~1,000 small ops per pass.

    A trace fixes every shape-derived value (frames, tokens) to the traced call's, hence the key. The first call of a
    signature runs the module itself (an input the module refuses raises here, as it would eagerly), then traces it
    (about a second for the demo UNet) and spot-checks the trace against the module on inputs it never saw (a trace
    records data-dependent Python as constants; the check catches a branch or a value that changes between the two
    inputs, not every one). A signature whose tracing or check fails runs the module from then on, after one
    warning. Same function as the module, to float rounding.

    TorchScript is deprecated from torch 2.13 on (``torch.jit.trace`` and ``freeze`` warn; the warning is silenced
    here). The pinned torch runs it; a release without it makes every signature fall back to the module, warning
    once each."""

    tolerance = 1e-4  # max |trace − module| / max |module| on the check inputs

    def __init__(self, module: torch.nn.Module, keep: int = 4):
        self.module, self.keep = module, keep
        self.traces: dict[tuple, Any] = {}
        self.failed: set[tuple] = set()  # signatures that run the module

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        trace = self.traces.pop(key, None)
        if trace is None:
            out = self.module(*inputs)  # the first call of a signature: the module's answer (or its error)
            if key not in self.failed:
                trace = self._trace(inputs)
                if trace is None:
                    self.failed.add(key)
                else:
                    while len(self.traces) >= self.keep:
                        self.traces.pop(next(iter(self.traces)))
                    self.traces[key] = trace
            return out
        self.traces[key] = trace  # most recent last
        return trace(*inputs)

    def _trace(self, inputs: tuple[torch.Tensor, ...]):
        import warnings

        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # the shape-derived values a trace fixes (the key covers them), and TorchScript's deprecation notice
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
                example = tuple(t.clone() for t in inputs)  # inference tensors cannot be saved by the tracer
                traced = torch.jit.trace(self.module.eval(), example, check_trace=False)
                frozen = torch.jit.freeze(traced)
                # other values of the same signature: a timestep, g and sample the trace never saw
                probe = tuple(t * 0.75 + 0.125 if t.is_floating_point() else t for t in example)
                want, got = self.module(*probe).float(), frozen(*probe).float()
                error = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
                if not error <= self.tolerance:
                    raise ValueError(f"the trace differs from the module by {error:.1e} (relative) on new inputs")
                return frozen
        except Exception as exc:  # any tracing problem: this signature runs the module, said once
            shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
            log.warning("the UNet could not be frozen for inputs %s (%s); running it eagerly for them", shapes, exc)
            return None


class OnnxRuntimeBackend:
    """The graphs of an export folder (``mindvideo export --format onnx``) under onnxruntime.

    ``providers``: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu). ``threads`` caps intra-op threads.
    """

    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, *, providers: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        from mindvideo.export import load_export

        self.exported = load_export(export_dir)
        self.specs = self.exported.specs
        wanted = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if providers not in wanted:
            raise MindVideoError("expected --providers cpu or cuda", repr(providers), "pick one")
        if providers == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MindVideoError(
                "expected onnxruntime's CUDA execution provider",
                f"providers {ort.get_available_providers()}",
                'pip install -e ".[gpu]" in the mindvideo checkout, then pip uninstall -y onnxruntime (the CPU build)',
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = lambda name: ort.InferenceSession(
            str(self.exported.onnx_path(name)), options, providers=wanted[providers]
        )
        self.sessions = {name: self._session(name) for name in ("fmri_encoder", "unet", "vae_decoder")}
        self.providers = providers
        self.scheduler_config = self.exported.scheduler_config
        self.dtypes = {name: np.dtype(spec.inputs[0].dtype) for name, spec in self.specs.items()}
        self.unet_facts = UNetFacts.from_spec(self.specs["unet"])
        _, window, voxels = self.specs["fmri_encoder"].inputs[0].shape
        _, channels, _, h, w = self.specs["unet"].inputs[0].shape
        height = self.specs["vae_decoder"].outputs[0].shape[2]
        self.geometry = Geometry(window, voxels, channels, (h, w), height // h)

    def _run(self, network: str, **inputs: np.ndarray) -> np.ndarray:
        spec = self.specs[network]
        for tensor in spec.inputs:
            dims = [d for d in inputs[tensor.name].shape]
            check_profile(spec, tensor.shape, dims, tensor.name)
        return self.sessions[network].run(None, inputs)[0]

    def encode(self, fmri: np.ndarray) -> np.ndarray:
        return self._run("fmri_encoder", fmri=fmri.astype(self.dtypes["fmri_encoder"], copy=False))

    @property
    def guidance_input(self) -> bool:
        """Whether the exported UNet is a student's (it has a ``guidance`` input)."""
        return self.unet_facts.guidance_embedding

    def denoise(self, x: np.ndarray, t: float, cond: np.ndarray, guidance=None) -> np.ndarray:
        check_guidance(self.unet_facts, guidance, "this export")
        dtype = self.dtypes["unet"]
        timestep = np.full((x.shape[0],), t, dtype=np.float32)
        inputs = {"sample": x.astype(dtype, copy=False), "timestep": timestep, "encoder_hidden_states": cond}
        if guidance is not None:
            inputs["guidance"] = guidance_rows(guidance, x.shape[0])  # float32 whatever the graph precision
        return self._run("unet", **inputs).astype(np.float32, copy=False)

    def check_decoder(self, decoder: str) -> None:
        """Make ``decoder`` ready: the ``tiny_decoder`` graph gets its session on first use (a
        :class:`MindVideoError` saying how to export one when the folder has none)."""
        network = decoder_network(decoder)
        if network not in self.sessions:
            check_decoder_graph(self.specs, network, self.exported.root, "onnx")
            self.sessions[network] = self._session(network)

    def decode(self, latents: np.ndarray, decoder: str = "vae") -> np.ndarray:
        self.check_decoder(decoder)
        network = decoder_network(decoder)
        images = self._run(network, latent=latents.astype(self.dtypes[network], copy=False))
        return images.astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": self.providers, "precision": self.specs["unet"].precision}


def make_backend(
    name: str,
    *,
    checkpoint: str | Path | None,
    engine: str | Path | None,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int | None = None,
):
    """The backend called ``name`` (see :data:`BACKENDS`); ``threads`` caps onnxruntime's intra-op threads.

    Every backend exposes

    * ``encode(fmri (B, W, V)) -> cond`` — the fMRI encoder; ``cond`` stays in the backend's own type,
    * ``denoise(x (N, 4, F, h, w), t, cond, guidance=None) -> eps`` — the seam the sampling loop calls once per step;
      a student UNet (``guidance_input``) needs ``guidance``, its guidance scale g (a float or (N,) values), which the
      runtime binds in (``functools.partial(backend.denoise, guidance=g)``) so the loop always calls
      ``denoise(x, t, cond)``; a teacher refuses it,
    * ``decode(latents (M, 4, h, w), decoder="vae") -> images (M, 3, H, W)`` float32 in [0, 1] — the VAE decoder
      per frame, or (``decoder="tiny"``) the checkpoint's distilled tiny decoder (its ``tiny_decoder`` graph or
      engine); ``check_decoder(decoder)`` loads it ahead of time or raises :class:`MindVideoError` when there is none,

    with numpy float32 in and out of ``denoise`` and ``decode``, so the C sampling loop
    (:func:`~mindvideo.engine.run_loop`) drives any of them. The backends whose UNet lives on a torch device (PyTorch,
    TensorRT) also have ``device_unet(sample, timestep, cond, guidance=None)`` on device tensors of ``unet_dtype``
    (``guidance`` a (N,) float32 device tensor for a student): the device loop (:class:`~mindvideo.engine.GraphedLoop`,
    captured into one CUDA graph on a GPU) calls it instead of ``denoise``. The networks are the exported ones
    (:mod:`mindvideo.export.modules`): the PyTorch backend calls the same modules the ONNX graphs were traced from, so
    every backend computes one function.
    """
    if name in ("torch", "torch-compile"):
        if checkpoint is None:
            raise MindVideoError(f"expected --checkpoint for the {name} backend", "none", "pass the checkpoint folder")
        return TorchBackend(checkpoint, device=device, dtype=dtype, compile=name == "torch-compile")
    if engine is None:
        raise MindVideoError(
            f"expected --engine (an export folder) for the {name} backend", "none", "run `mindvideo export` first"
        )
    if name == "onnxruntime":
        return OnnxRuntimeBackend(engine, providers="cuda" if device.startswith("cuda") else "cpu", threads=threads)
    if name == "tensorrt":
        return TensorRTBackend(engine)
    raise MindVideoError(f"expected a backend among {BACKENDS}", repr(name), "pick one")
