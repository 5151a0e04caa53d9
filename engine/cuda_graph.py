"""The whole denoising loop as one CUDA graph (:class:`GraphedLoop`): no Python and no host sync per step.

A clip is: copy noise and conditions in, one ``replay()``, copy latents out. The capture path needs a CUDA GPU and
has not run on one yet; ``tests/engine/test_engine_cuda_graph.py`` has the GPU checks, skipped on CPU.
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

UNet = Callable[..., torch.Tensor]  # (sample, timestep, cond) -> eps; a student's also takes guidance (B,)


class GraphedLoop:
    """All ``plan`` steps for latents of ``shape`` (B, C, F, h, w) and conditions of ``cond_shape`` (2B or B, L, D).

    ``single_pass``: a student UNet, called ``unet(x, t, cond, guidance)`` with B rows and ``guidance`` the (B,)
    float32 guidance scale; its output is the update's model output as it is (no guidance mix). A stochastic plan
    (LCM) takes ``noise`` (``plan.noise_rows``, B, C, F, h, w) with every call.

    Static device buffers for one (batch, frames, resolution, steps, scheduler) configuration — the latents, the guided
    model input, the conditions, the solver state, every step's timesteps and the fused update's parameter rows
    (:func:`mindvideo.engine.device_update_triton.plan_parameters`) — and captures all S steps of ``UNet([x; x]·s_i,
    t_i, cond) → guidance + scheduler update`` (the Triton kernel) into one ``torch.cuda.CUDAGraph``. A clip is then:
    copy noise and conditions in, one ``replay()``, copy latents out. Each captured step reads its own precomputed
    timestep and parameter row, so the replay needs nothing from the host.

    Stochastic samplers stay static too: LCM's re-noising noise (one draw per step but the last) is a ``(K, B, ...)``
    buffer filled before the replay like the latents (:func:`mindvideo.sampling.step_noise`), and step ``i`` reads row
    ``i``; a student's guidance scale is a static ``(B,)`` buffer too.

    :meth:`GraphedLoop.run_eager` runs the same steps as an ordinary per-step Python loop (any device; on CPU with the
    torch update) — the baseline the graph is measured against, and the CPU-testable twin of the captured sequence.
    """

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
        single_pass: bool = False,
    ):
        self.unet, self.plan, self.guidance = unet, plan, guidance_scale
        self.guided = guidance_scale > 1.0 and not single_pass
        self.device, self.dtype = torch.device(device), dtype
        b = shape[0]
        rows = 2 * b if self.guided else b
        self.x = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.x_in = torch.zeros((rows, *shape[1:]), dtype=dtype, device=self.device)
        self.cond = torch.zeros(cond_shape, dtype=dtype, device=self.device)
        self.state = torch.zeros_like(self.x) if plan.stateful else None
        # static inputs of a student (its g) and of a stochastic sampler (every step's noise), filled before a replay
        self.g = torch.full((b,), float(guidance_scale), device=self.device) if single_pass else None
        self.noise = torch.zeros((plan.noise_rows, *shape), device=self.device) if plan.stochastic else None
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
        if self.g is None:
            eps = self.unet(self.x_in, self.timesteps[i], self.cond)
        else:
            eps = self.unet(self.x_in, self.timesteps[i], self.cond, self.g)
        eps = eps.contiguous()  # (rows, C, F, h, w)
        eps_pos, eps_neg = (eps[b:], eps[:b]) if self.guided else (eps, None)
        coefficients = self.plan.coefficients[i].tolist()
        noise = self.noise[i] if coefficients[6] != 0.0 else None  # row i of the static buffer: a fixed address
        if self.params is not None:
            from .device_update_triton import launch_fused_update

            launch_fused_update(
                self.x, eps_pos, eps_neg, self.guidance, coefficients, self.state, noise, params=self.params[i]
            )
        else:
            fused_update_tensor(self.x, eps_pos, eps_neg, self.guidance, coefficients, self.state, noise)

    def _load(self, latents: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None) -> None:
        if (noise is None) != (self.noise is None) or (noise is not None and noise.shape != self.noise.shape):
            raise MindVideoError(
                f"expected step noise of shape {None if self.noise is None else tuple(self.noise.shape)}"
                f" for this {self.plan.sampler} loop",
                "none" if noise is None else f"shape {tuple(noise.shape)}",
                "pass mindvideo.sampling.step_noise(generator, shape, steps) for LCM, nothing otherwise",
            )
        self.x.copy_(latents)
        self.cond.copy_(cond)
        if self.state is not None:
            self.state.zero_()
        if noise is not None:
            self.noise.copy_(noise)

    # ------------------------------------------------------------------------------------------------ running

    @torch.inference_mode()
    def run_eager(self, latents: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The per-step Python loop over the same buffers (the baseline; runs on CPU too)."""
        self._load(latents, cond, noise)
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
    def __call__(self, latents: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, C, F, h, w) fp32, conditions and (stochastic plans) step noise → denoised latents: one graph
        launch."""
        if self.graph is None:
            self._load(latents, cond, noise)  # checked before the warm-up steps read the buffers
            self.capture()
        self._load(latents, cond, noise)
        self.graph.replay()
        return self.x.clone()


class GraphCache:
    """One :class:`GraphedLoop` per static configuration (shapes, steps, scheduler, guidance, dtype), built lazily;
    at most ``max_loops`` are kept (least recently used goes first), since each holds its buffers and, once captured,
    its graph's memory pool — a stream that lowers its steps under load would otherwise add one per step count.
    ``single_pass``: ``unet`` is a student's (see :class:`GraphedLoop`)."""

    def __init__(
        self,
        unet: UNet,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        max_loops: int = 4,
        single_pass: bool = False,
    ):
        self.unet, self.device, self.dtype, self.max_loops = unet, device, dtype, max_loops
        self.single_pass = single_pass
        self._loops: OrderedDict[tuple, GraphedLoop] = OrderedDict()

    def get(
        self, plan: SamplingPlan, shape: tuple[int, ...], cond_shape: tuple[int, ...], guidance: float
    ) -> GraphedLoop:
        key = (tuple(shape), tuple(cond_shape), plan.sampler, tuple(plan.timesteps.tolist()), guidance)
        key += (plan.coefficients.tobytes(),)  # e.g. DDIM with and without eta share their timesteps
        if key in self._loops:
            self._loops.move_to_end(key)
            return self._loops[key]
        while len(self._loops) >= self.max_loops:
            _, evicted = self._loops.popitem(last=False)
            log.info("graph cache full (%d): dropping the loop for %s", self.max_loops, tuple(evicted.x.shape))
        self._loops[key] = GraphedLoop(
            self.unet,
            plan,
            shape,
            cond_shape,
            guidance_scale=guidance,
            dtype=self.dtype,
            device=self.device,
            single_pass=self.single_pass,
        )
        return self._loops[key]
