"""TensorRT backend: the export folder's engines, buffers bound by address, one device-memory arena.

Written against the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``, user-managed context memory).
Not yet run on a GPU: the import guard, the engine checks and the shape checks are tested on CPU.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

NETWORKS = ("fmri_encoder", "unet", "vae_decoder")


class TensorRTBackend:
    """``encode`` / ``denoise`` / ``decode`` on TensorRT engines built by ``mindvideo export --format trt``.

    Buffers: every I/O tensor gets one preallocated torch CUDA tensor at the profile's maximum shape, bound once with
    ``set_tensor_address``; a call sets the actual input shapes and uses the buffer's dense prefix (TensorRT reads and
    writes a packed tensor of the actual shape at the bound address — a strided slice of the max-shape buffer would not
    be that). :meth:`device_unet` runs the UNet engine on device tensors on the current stream, which is how
    :class:`~mindvideo.engine.GraphedLoop` captures the whole loop (TensorRT enqueues + the Triton update) into one
    CUDA graph. The three engines run one after another, never concurrently, so their activation memory is one arena of
    the largest ``device_memory_size_v2``, handed to each context with ``set_device_memory``. The tiny decoder's engine
    (``--decoder tiny``) is loaded on first use, into the arena when it fits (it does unless the decoder is larger than
    the UNet), so the arena — and a captured loop that uses it — never moves.
    """

    name = "tensorrt"

    def __init__(self, export_dir: str | Path, device: str = "cuda"):
        from mindvideo.export import current_target, load_export, require_tensorrt

        trt = require_tensorrt()
        self.device = torch.device(device)
        self.exported = load_export(export_dir)
        self.specs = self.exported.specs
        self.scheduler_config = self.exported.scheduler_config
        self.unet_facts = UNetFacts.from_spec(self.specs["unet"])
        self._trt, self._target = trt, current_target()  # refuses without a CUDA device
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts, self.buffers = {}, {}, {}
        self._own_memory: dict[str, torch.Tensor] = {}
        for name in NETWORKS:
            self._load(name)
        self._arena = self._shared_arena()
        self.stream = torch.cuda.Stream(self.device)
        _, window, voxels = self.specs["fmri_encoder"].inputs[0].shape
        _, channels, _, h, w = self.specs["unet"].inputs[0].shape
        self.geometry = Geometry(window, voxels, channels, (h, w), self.specs["vae_decoder"].outputs[0].shape[2] // h)

    def _load(self, name: str) -> None:
        """Deserialise network ``name``'s engine (this machine's, from the export's cache) and bind its buffers."""
        from mindvideo.export import engine_for

        engine = self._runtime.deserialize_cuda_engine(engine_for(self.exported, name, self._target))
        if engine is None:
            raise MindVideoError(
                f"expected a loadable TensorRT engine for {name}",
                "deserialisation failed",
                f"rebuild it: mindvideo export --checkpoint CKPT --out {self.exported.root} --format trt",
            )
        self.engines[name] = engine
        strategy = self._trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts[name] = engine.create_execution_context(strategy)
        self.buffers[name] = self._bind(name)

    def _bind(self, name: str) -> dict[str, torch.Tensor]:
        """One max-shape CUDA tensor per I/O tensor of ``name``, bound by address once (torch allocations are
        256-byte aligned, as TensorRT requires)."""
        spec, context = self.specs[name], self.contexts[name]
        buffers, dtypes = {}, {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
        for tensor, shape in spec.max_shapes().items():
            dtype = {"float32": torch.float32, "float16": torch.float16}[dtypes[tensor]]
            buffers[tensor] = torch.empty(shape, dtype=dtype, device=self.device)
            if not context.set_tensor_address(tensor, buffers[tensor].data_ptr()):
                raise RuntimeError(f"TensorRT refused the buffer address of {name}.{tensor}")
        return buffers

    def _shared_arena(self) -> torch.Tensor:
        size = max(int(engine.device_memory_size_v2) for engine in self.engines.values())
        arena, address = _aligned(size, self.device)
        self._arena_address, self._arena_size = address, size
        for context in self.contexts.values():
            context.set_device_memory(address, size)
        log.info("TensorRT: one %.1f MB activation arena for %d engines", size / 2**20, len(self.contexts))
        return arena

    def check_decoder(self, decoder: str) -> None:
        """Make ``decoder`` ready: the ``tiny_decoder`` engine is loaded on first use, its activations in the shared
        arena when they fit, else in memory of its own (a :class:`MindVideoError` saying how to export and build one
        when the folder has none)."""
        network = decoder_network(decoder)
        if network in self.contexts:
            return
        check_decoder_graph(self.specs, network, self.exported.root, "trt")
        self._load(network)
        size = int(self.engines[network].device_memory_size_v2)
        if size <= self._arena_size:
            address, size = self._arena_address, self._arena_size
        else:
            self._own_memory[network], address = _aligned(size, self.device)
        self.contexts[network].set_device_memory(address, size)

    def _enqueue(self, name: str, inputs: dict[str, np.ndarray | torch.Tensor], stream: torch.cuda.Stream):
        """Copy the inputs into the dense prefixes of the bound buffers, set the input shapes and enqueue the engine
        on ``stream`` (no host sync); returns the output's dense prefix. The bound addresses never change, so the
        same work can be captured into a CUDA graph."""
        spec, context, buffers = self.specs[name], self.contexts[name], self.buffers[name]
        dims: dict[str, int] = {}
        with torch.cuda.stream(stream):
            for tensor in spec.inputs:
                value = torch.as_tensor(inputs[tensor.name])
                check_profile(spec, tensor.shape, list(value.shape), tensor.name)
                dims.update({axis: size for axis, size in zip(tensor.shape, value.shape) if isinstance(axis, str)})
                dense(buffers[tensor.name], value.shape).copy_(value, non_blocking=True)
                if not context.set_input_shape(tensor.name, tuple(value.shape)):
                    raise RuntimeError(f"TensorRT refused the shape {tuple(value.shape)} for {name}.{tensor.name}")
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {name} failed")
        out = spec.outputs[0]
        return dense(buffers[out.name], tuple(dims[a] if isinstance(a, str) else a for a in out.shape))

    def _execute(self, name: str, inputs: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Run one engine on the backend's stream and wait for it; returns the output (on the device)."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs made on the current stream
        out = self._enqueue(name, inputs, self.stream)
        self.stream.synchronize()
        return out

    def encode(self, fmri: np.ndarray) -> torch.Tensor:
        return self._execute("fmri_encoder", {"fmri": fmri}).clone()

    @property
    def guidance_input(self) -> bool:
        """Whether the UNet engine is a student's (it has a ``guidance`` input)."""
        return self.unet_facts.guidance_embedding

    def denoise(self, x: np.ndarray, t: float, cond: torch.Tensor, guidance=None) -> np.ndarray:
        check_guidance(self.unet_facts, guidance, "this export")
        timestep = np.full((x.shape[0],), t, dtype=np.float32)
        inputs = {"sample": x, "timestep": timestep, "encoder_hidden_states": cond}
        if guidance is not None:
            inputs["guidance"] = guidance_rows(guidance, x.shape[0])
        return self._execute("unet", inputs).float().cpu().numpy()

    def decode(self, latents: np.ndarray, decoder: str = "vae") -> np.ndarray:
        self.check_decoder(decoder)
        return self._execute(decoder_network(decoder), {"latent": latents}).float().cpu().numpy()

    # ---------------------------------------------------------------------------------- the graphed device loop

    @property
    def unet_dtype(self) -> torch.dtype:
        """The dtype of the UNet engine's ``sample`` input (what :class:`~mindvideo.engine.GraphedLoop` feeds)."""
        return self.buffers["unet"]["sample"].dtype

    def device_unet(
        self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet engine on CUDA tensors, enqueued on the *current* stream without a host sync, so that a CUDA-graph
        capture of the whole loop (:class:`~mindvideo.engine.GraphedLoop`) records it with the update kernels.

        Inputs are copied into the bound buffers (the copies are captured too: each replayed step copies its own
        timestep row), so the engine's addresses never change between capture and replay. Returns the dense output
        prefix, valid until the next call. ``guidance``: a student engine's (N,) float32 g input."""
        check_guidance(self.unet_facts, guidance, "this export")
        values = (sample, timestep, cond) if guidance is None else (sample, timestep, cond, guidance)
        inputs = dict(zip((t.name for t in self.specs["unet"].inputs), values))
        return self._enqueue("unet", inputs, torch.cuda.current_stream(self.device))

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": torch.cuda.get_device_name(self.device)}


def _aligned(size: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """``size`` bytes of device memory and their first 256-byte-aligned address (TensorRT wants that alignment)."""
    memory = torch.empty(size + 256, dtype=torch.uint8, device=device)
    return memory, (memory.data_ptr() + 255) // 256 * 256


def dense(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The packed ``shape`` tensor at the start of ``buffer`` (how TensorRT lays out a smaller-than-max tensor)."""
    count = 1
    for size in shape:
        count *= int(size)
    return buffer.view(-1)[:count].view(*shape)
