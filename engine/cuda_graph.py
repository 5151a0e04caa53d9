"""The whole denoising loop as one CUDA graph: no Python and no host sync per step.

:class:`GraphedLoop` owns static device buffers for one (batch, frames, resolution, steps, scheduler) configuration
— the latents, the guided model input, the conditions, the solver state, every step's timesteps and the fused
update's parameter rows (:func:`mindvideo.engine.device_update_triton.plan_parameters`) — and captures all S steps of
``UNet([x; x]·s_i, t_i, cond) → guidance + scheduler update`` (the Triton kernel) into one ``torch.cuda.CUDAGraph``.
A clip is then: copy noise and conditions in, one ``replay()``, copy latents out. Each captured step reads its own
precomputed timestep and parameter row, so the replay needs nothing from the host.

:meth:`GraphedLoop.run_eager` runs the same steps as an ordinary per-step Python loop (any device; on CPU with the
torch update) — the baseline the graph is measured against, and the CPU-testable twin of the captured sequence.

**Status**: the capture path needs a CUDA GPU and has not been executed on one yet (no GPU in this repository's
development sessions so far); ``tests/engine/test_engine_cuda_graph.py`` has the GPU checks, skipped on CPU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import torch

from mindvideo.errors import MindVideoError

from .device_update import fused_update_tensor
from .schedule import SamplingPlan

log = logging.getLogger(__name__)

UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GraphedLoop:
    """All ``plan`` steps for latents of ``shape`` (B, C, F, h, w) and conditions of ``cond_shape`` (2B or B, L, D)."""

    def __init__(
        self,
        unet: UNet,
        plan: SamplingPlan,
        shape: tuple[int, ...],
        cond_shape: tuple[int, ...],
        *,
        guidance_scale: float,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cuda",
    ):
        if plan.stochastic:
            raise MindVideoError(
                "expected a deterministic sampler for the graphed loop", "DDIM with eta > 0", "use eta 0, dpm or euler"
            )
        self.unet, self.plan, self.guidance = unet, plan, guidance_scale
        self.guided = guidance_scale > 1.0
        self.device, self.dtype = torch.device(device), dtype
        b = shape[0]
        rows = 2 * b if self.guided else b
        self.x = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.x_in = torch.zeros((rows, *shape[1:]), dtype=dtype, device=self.device)
        self.cond = torch.zeros(cond_shape, dtype=dtype, device=self.device)
        self.state = torch.zeros_like(self.x) if plan.stateful else None
        t = torch.tensor(plan.timesteps, dtype=torch.float32)  # a copy: plan arrays are read-only
        self.timesteps = t[:, None].expand(-1, rows).contiguous().to(self.device)  # (S, rows): one buffer per step
        self.params = None
        if self.device.type == "cuda":
            from .device_update_triton import plan_parameters

            self.params = plan_parameters(plan, guidance_scale, self.device)  # (S, 8) float64, uploaded once
        self.graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------------------------------------ one step

    def _step(self, i: int) -> None:
        b = self.x.shape[0]
        self.x_in[:b].copy_(self.x * float(self.plan.input_scale[i]))  # scaled model input, cast to the UNet dtype
        if self.guided:
            self.x_in[b:].copy_(self.x_in[:b])
        eps = self.unet(self.x_in, self.timesteps[i], self.cond).contiguous()  # (rows, C, F, h, w)
        eps_pos, eps_neg = (eps[b:], eps[:b]) if self.guided else (eps, None)
        coefficients = self.plan.coefficients[i].tolist()
        if self.params is not None:
            from .device_update_triton import launch_fused_update

            launch_fused_update(
                self.x, eps_pos, eps_neg, self.guidance, coefficients, self.state, params=self.params[i]
            )
        else:
            fused_update_tensor(self.x, eps_pos, eps_neg, self.guidance, coefficients, self.state)

    def _load(self, latents: torch.Tensor, cond: torch.Tensor) -> None:
        self.x.copy_(latents)
        self.cond.copy_(cond)
        if self.state is not None:
            self.state.zero_()

    # ------------------------------------------------------------------------------------------------ running

    @torch.inference_mode()
    def run_eager(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The per-step Python loop over the same buffers (the baseline; runs on CPU too)."""
        self._load(latents, cond)
        for i in range(self.plan.num_steps):
            self._step(i)
        return self.x.clone()

    def capture(self, warmup: int = 2) -> None:
        """Warm up on a side stream (library autotuning, Triton compilation), then capture all steps once."""
        if self.device.type != "cuda":
            raise MindVideoError("expected a CUDA device to capture a CUDA graph", str(self.device), "use run_eager")
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for i in range(min(warmup, self.plan.num_steps)):
                self._step(i)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            for i in range(self.plan.num_steps):
                self._step(i)
        log.info("captured %d steps of %s into one CUDA graph", self.plan.num_steps, tuple(self.x.shape))

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, F, h, w) fp32 and conditions → denoised latents: one graph launch."""
        if self.graph is None:
            self.capture()
        self._load(latents, cond)
        self.graph.replay()
        return self.x.clone()


class GraphCache:
    """One :class:`GraphedLoop` per static configuration (shapes, steps, scheduler, guidance, dtype), built lazily;
    at most ``max_loops`` are kept (least recently used goes first), since each holds its buffers and, once captured,
    its graph's memory pool — a stream that lowers its steps under load would otherwise add one per step count."""

    def __init__(
        self,
        unet: UNet,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        max_loops: int = 4,
    ):
        self.unet, self.device, self.dtype, self.max_loops = unet, device, dtype, max_loops
        self._loops: OrderedDict[tuple, GraphedLoop] = OrderedDict()

    def get(
        self, plan: SamplingPlan, shape: tuple[int, ...], cond_shape: tuple[int, ...], guidance: float
    ) -> GraphedLoop:
        key = (tuple(shape), tuple(cond_shape), plan.sampler, plan.num_steps, tuple(plan.timesteps.tolist()), guidance)
        if key in self._loops:
            self._loops.move_to_end(key)
            return self._loops[key]
        while len(self._loops) >= self.max_loops:
            _, evicted = self._loops.popitem(last=False)
            log.info("graph cache full (%d): dropping the loop for %s", self.max_loops, tuple(evicted.x.shape))
        self._loops[key] = GraphedLoop(
            self.unet, plan, shape, cond_shape, guidance_scale=guidance, dtype=self.dtype, device=self.device
        )
        return self._loops[key]
