"""TensorRT backend: the export folder's engines, buffers bound by address, one device-memory arena.

Written against the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``, user-managed context memory).
**Not executed in this repository's CI or development machines** (no GPU or TensorRT there): the import guard, the
engine checks (:func:`mindvideo.export.engine_for`) and the shape checks are tested; the CUDA path awaits a GPU run.

Buffers: every I/O tensor gets one preallocated torch CUDA tensor at the profile's maximum shape, bound with
``set_tensor_address``; a call sets the actual input shapes and uses the leading slice. :meth:`device_unet` runs the
UNet engine on device tensors on the current stream, which is how :class:`~mindvideo.engine.GraphedLoop` captures the
whole loop (TensorRT enqueues + the Triton update) into one CUDA graph. The three engines run one
after another, never concurrently, so their activation memory is one arena of the largest
``device_memory_size_v2``, handed to each context with ``set_device_memory``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.errors import MindVideoError

from .backends import Geometry, check_profile

log = logging.getLogger(__name__)

NETWORKS = ("fmri_encoder", "unet", "vae_decoder")


class TensorRTBackend:
    """``encode`` / ``denoise`` / ``decode`` on TensorRT engines built by ``mindvideo export --format trt``."""

    name = "tensorrt"

    def __init__(self, export_dir: str | Path, device: str = "cuda"):
        from mindvideo.export import current_target, engine_for, load_export, require_tensorrt

        trt = require_tensorrt()
        self.device = torch.device(device)
        self.exported = load_export(export_dir)
        self.specs = self.exported.specs
        self.scheduler_config = self.exported.scheduler_config
        target = current_target()  # refuses without a CUDA device
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts, self.buffers = {}, {}, {}
        for name in NETWORKS:
            engine = runtime.deserialize_cuda_engine(engine_for(self.exported, name, target))
            if engine is None:
                raise MindVideoError(
                    f"expected a loadable TensorRT engine for {name}",
                    "deserialisation failed",
                    f"rebuild it: mindvideo export --checkpoint CKPT --out {export_dir} --format trt",
                )
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.buffers[name] = self._bind(name)
        self._arena = self._shared_arena()
        self.stream = torch.cuda.Stream(self.device)
        _, window, voxels = self.specs["fmri_encoder"].inputs[0].shape
        _, channels, _, h, w = self.specs["unet"].inputs[0].shape
        self.geometry = Geometry(window, voxels, channels, (h, w), self.specs["vae_decoder"].outputs[0].shape[2] // h)

    def _bind(self, name: str) -> dict[str, torch.Tensor]:
        """One max-shape CUDA tensor per I/O tensor of ``name``, bound by address once."""
        spec, context = self.specs[name], self.contexts[name]
        buffers, dtypes = {}, {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
        for tensor, shape in spec.max_shapes().items():
            dtype = {"float32": torch.float32, "float16": torch.float16}[dtypes[tensor]]
            buffers[tensor] = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(tensor, buffers[tensor].data_ptr())
        return buffers

    def _shared_arena(self) -> torch.Tensor:
        size = max(int(engine.device_memory_size_v2) for engine in self.engines.values())
        arena = torch.empty(size + 256, dtype=torch.uint8, device=self.device)
        address = (arena.data_ptr() + 255) // 256 * 256  # TensorRT wants 256-byte alignment
        for context in self.contexts.values():
            context.set_device_memory(address, size)
        log.info("TensorRT: one %.1f MB activation arena for %d engines", size / 2**20, len(self.contexts))
        return arena

    def _execute(self, name: str, inputs: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Copy inputs into the bound buffers' leading slices, run, return the output slice (on the device)."""
        spec, context, buffers = self.specs[name], self.contexts[name], self.buffers[name]
        dims: dict[str, int] = {}
        for tensor, buffer in buffers.items():  # device_unet may have bound other addresses
            context.set_tensor_address(tensor, buffer.data_ptr())
        with torch.cuda.stream(self.stream):
            for tensor in spec.inputs:
                value = torch.as_tensor(inputs[tensor.name])
                check_profile(spec, tensor.shape, list(value.shape), tensor.name)
                dims.update({axis: size for axis, size in zip(tensor.shape, value.shape) if isinstance(axis, str)})
                view = buffers[tensor.name][tuple(slice(0, s) for s in value.shape)]
                view.copy_(value, non_blocking=True)
                context.set_input_shape(tensor.name, tuple(value.shape))
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {name} failed")
        out = spec.outputs[0]
        shape = tuple(dims[a] if isinstance(a, str) else a for a in out.shape)
        self.stream.synchronize()
        return buffers[out.name][tuple(slice(0, s) for s in shape)]

    def encode(self, fmri: np.ndarray) -> torch.Tensor:
        return self._execute("fmri_encoder", {"fmri": fmri}).clone()

    def denoise(self, x: np.ndarray, t: float, cond: torch.Tensor) -> np.ndarray:
        timestep = np.full((x.shape[0],), t, dtype=np.float32)
        eps = self._execute("unet", {"sample": x, "timestep": timestep, "encoder_hidden_states": cond})
        return eps.float().cpu().numpy()

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._execute("vae_decoder", {"latent": latents}).float().cpu().numpy()

    # ---------------------------------------------------------------------------------- the graphed device loop

    @property
    def unet_dtype(self) -> torch.dtype:
        """The dtype of the UNet engine's ``sample`` input (what :class:`~mindvideo.engine.GraphedLoop` feeds)."""
        return self.buffers["unet"]["sample"].dtype

    def device_unet(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet engine on CUDA tensors, enqueued on the *current* stream without a host sync, so that a CUDA-graph
        capture of the whole loop (:class:`~mindvideo.engine.GraphedLoop`) records it with the update kernels.

        An input whose dtype and layout match the engine's is bound by its own address — each captured step passes
        its own timestep row, so every replayed step reads its own timestep — and any other input is copied into
        the bound buffer first (the copy is captured too). Returns the leading slice of the output buffer, valid
        until the next call."""
        spec, context, buffers = self.specs["unet"], self.contexts["unet"], self.buffers["unet"]
        dims: dict[str, int] = {}
        for tensor, value in zip(spec.inputs, (sample, timestep, cond)):
            check_profile(spec, tensor.shape, list(value.shape), tensor.name)
            dims.update({axis: size for axis, size in zip(tensor.shape, value.shape) if isinstance(axis, str)})
            bound = buffers[tensor.name]
            if value.dtype == bound.dtype and value.is_contiguous() and value.device == bound.device:
                context.set_tensor_address(tensor.name, value.data_ptr())
            else:
                bound[tuple(slice(0, s) for s in value.shape)].copy_(value)
                context.set_tensor_address(tensor.name, bound.data_ptr())
            context.set_input_shape(tensor.name, tuple(value.shape))
        out = spec.outputs[0]
        context.set_tensor_address(out.name, buffers[out.name].data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution of unet failed")
        shape = tuple(dims[a] if isinstance(a, str) else a for a in out.shape)
        return buffers[out.name][tuple(slice(0, s) for s in shape)]

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": torch.cuda.get_device_name(self.device)}
