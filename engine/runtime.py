"""``Runtime``: encoder → C-backed sampling loop → decoder over any backend.

The same encoder → loop → decoder pipeline as :class:`mindvideo.pipeline.MindVideoPipeline` (same noise convention,
guidance, schedulers), but the loop is :func:`mindvideo.engine.run_loop` (C, GIL released, no Python per update) and
the networks come from a backend (:mod:`mindvideo.engine.backends`): PyTorch (frozen, eager or compiled),
onnxruntime, TensorRT.

A distilled student (its UNet takes the guidance scale g as an input: ``backend.guidance_input``) runs as in the
pipeline: only the positive conditions, one UNet pass of B rows per step with g bound into the denoiser
(``denoise(x, t, cond)`` stays the loop's one seam), and — with LCM — the re-noising noise drawn after the initial
latents from the same seeded generator, precomputed into one ``(S − 1, B, 4, F, h, w)`` buffer for every loop.

``GenerationConfig.decoder`` picks the decoder as in the pipeline: ``"vae"``, or ``"tiny"`` — the backend's tiny
decoder (the checkpoint's ``tiny_decoder/`` module, the export's ``tiny_decoder`` graph or engine), checked before
anything is encoded.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.pipeline import GenerationConfig, check_fmri, check_negative_rows, check_student, generation_size
from mindvideo.sampling import SCHEDULERS, initial_latents, initial_noise, make_scheduler, step_noise

from .backend_common import UNetFacts, check_profile, decoder_network
from .host_loop import run_loop
from .schedule import make_plan

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Wall-clock seconds of the last call, per stage."""

    encode: float = 0.0
    loop: float = 0.0
    decode: float = 0.0
    steps: int = 0
    extra: dict = field(default_factory=dict)
    unet_evals: int = 0  # UNet evaluations per clip: 2·S for a guided teacher, S for a student or unguided run

    @property
    def total(self) -> float:
        return self.encode + self.loop + self.decode


LOOPS = ("auto", "c", "device", "graph")


class Runtime:
    """``runtime(fmri (B, W, V), negative, GenerationConfig) -> (B, F, H, W, 3) uint8`` on ``backend``.

    ``loop`` picks the sampling loop: ``"c"`` — the C loop over host buffers, one ``backend.denoise`` per step (any
    backend); ``"device"`` — the per-step Python loop over device buffers with the fused update
    (:meth:`GraphedLoop.run_eager`, backends with ``device_unet``); ``"graph"`` — the same steps captured once per
    configuration into a CUDA graph and replayed with one launch per clip (CUDA only); ``"auto"`` — ``graph`` for the
    torch backend on a CUDA device unless the sampler is DDIM with η > 0 (its noise comes per step), else ``c``
    (TensorRT takes ``graph`` on request only, until that path has run on a GPU).
    """

    def __init__(self, backend, scheduler_config: dict | None = None, transform=None, loop: str = "auto"):
        if loop not in LOOPS:
            raise MindVideoError(f"expected a loop among {LOOPS}", repr(loop), "pick one")
        device = getattr(backend, "device", None)
        on_cuda = getattr(device, "type", None) == "cuda"
        if loop in ("device", "graph") and not hasattr(backend, "device_unet"):
            raise MindVideoError(
                f"expected a backend with a device UNet for --loop {loop}", backend.name, "use --loop c"
            )
        if loop == "graph" and not on_cuda:
            raise MindVideoError("expected a CUDA device for --loop graph", str(device), "use --loop device or c")
        self.auto = loop == "auto"
        # auto picks the graph for the torch backend only: the TensorRT graph path has not run on a GPU yet
        self.loop = loop if not self.auto else ("graph" if on_cuda and backend.name == "torch" else "c")
        self._graphs = None
        self.backend = backend
        self.scheduler_config = scheduler_config or backend.scheduler_config
        self.transform = transform  # the checkpoint's FMRITransform, if any: raw scans and the default negative
        self.default_negative = None if transform is None else transform.negative_fmri
        self.times = StageTimes()
        self._plans: dict[tuple, object] = {}
        self.unet_facts = getattr(backend, "unet_facts", UNetFacts())

    @property
    def single_pass(self) -> bool:
        """A student UNet: one pass per step with g as an input, only the positive condition."""
        return self.unet_facts.guidance_embedding

    def guided(self, cfg: GenerationConfig) -> bool:
        """Two UNet rows per clip ([negative; positive]) and the guidance mix: a teacher with g > 1."""
        return cfg.guidance_scale > 1.0 and not self.single_pass

    def unet_evals(self, cfg: GenerationConfig) -> int:
        """UNet evaluations per clip: 2·S for a guided teacher, S for a student (or an unguided run)."""
        return (2 if self.guided(cfg) else 1) * cfg.num_inference_steps

    @property
    def geometry(self):
        return self.backend.geometry

    @property
    def window_size(self) -> int:
        return self.geometry.window_size

    @property
    def num_voxels(self) -> int:
        return self.geometry.num_voxels

    def check_generation(self, cfg: GenerationConfig, batch: int = 1) -> tuple[int, int]:
        """Validated (height, width) for ``cfg`` (as :meth:`MindVideoPipeline.check_generation`), and for exported
        backends the UNet call it implies (rows, frames, size) inside the export's profile — checked up front, so a
        stream cannot fail mid-scan on a shape the engine was not built for."""
        shape, factor = self.latent_shape(batch, cfg), self.geometry.vae_factor
        check_student(self.unet_facts, cfg.scheduler, cfg.guidance_scale)
        self.backend.check_decoder(cfg.decoder)  # a missing tiny decoder is reported before any work
        specs = getattr(self.backend, "specs", None)
        if specs is not None:
            spec = specs["unet"]
            rows = 2 * batch if self.guided(cfg) else batch
            check_profile(spec, spec.inputs[0].shape, [rows, *shape[1:]], spec.inputs[0].name)
        return shape[3] * factor, shape[4] * factor

    def plan(self, cfg: GenerationConfig):
        """The sampling plan of (scheduler, steps, eta), built once and cached."""
        key = (cfg.scheduler, cfg.num_inference_steps, cfg.eta)
        if key not in self._plans:
            if cfg.scheduler not in SCHEDULERS:
                raise MindVideoError(f"expected a scheduler among {SCHEDULERS}", repr(cfg.scheduler), "pick one")
            scheduler = make_scheduler(self.scheduler_config, cfg.scheduler)
            self._plans[key] = make_plan(scheduler, cfg.num_inference_steps, eta=cfg.eta)
        return self._plans[key]

    def latent_shape(self, batch: int, cfg: GenerationConfig) -> tuple[int, ...]:
        g = self.geometry
        default = (g.latent_size[0] * g.vae_factor, g.latent_size[1] * g.vae_factor)
        height, width = generation_size(cfg, default, g.vae_factor)
        return (batch, g.latent_channels, cfg.num_frames, height // g.vae_factor, width // g.vae_factor)

    def conditions(self, fmri: np.ndarray, negative: np.ndarray | None, guided: bool):
        """[negative; positive] conditions in the backend's own type."""
        if not guided:
            return self.backend.encode(fmri)
        if negative is None:
            negative = self.default_negative if self.default_negative is not None else fmri.mean(0)
        negative = np.asarray(negative, np.float32).reshape(-1, *fmri.shape[1:])
        check_negative_rows(negative.shape[0], fmri.shape[0])
        negative = np.broadcast_to(negative, fmri.shape)
        return self.backend.encode(np.ascontiguousarray(np.concatenate([negative, fmri])))

    def __call__(
        self,
        fmri,
        negative=None,
        config: GenerationConfig | None = None,
        *,
        output: str = "uint8",
        progress: bool = False,  # accepted for parity with MindVideoPipeline; the runtime draws no bar
    ):
        cfg = config or GenerationConfig()
        g = self.geometry
        x = check_fmri(fmri, g.window_size, g.num_voxels).numpy()
        neg = None if negative is None else check_fmri(negative, g.window_size, g.num_voxels, "negative fMRI").numpy()
        shape = self.latent_shape(x.shape[0], cfg)
        plan = self.plan(cfg)
        check_student(self.unet_facts, cfg.scheduler, cfg.guidance_scale)
        self.backend.check_decoder(cfg.decoder)
        if neg is not None and self.single_pass:
            log.warning("a distilled student ignores the negative fMRI: its negative was fixed at distillation")
        # 1. conditions (a student: the positive ones only)
        start = time.perf_counter()
        cond = self.conditions(x, neg, self.guided(cfg))
        encoded = time.perf_counter()
        # 2. the loop: C-backed (one denoise call per step), or on the device (captured into a CUDA graph)
        latents, noise = self.noise(shape, cfg, plan)
        if self.loop == "c" or (self.auto and plan.stochastic and noise is None):  # DDIM η: noise drawn per step
            latents = self.host_loop(plan, latents, cond, cfg, noise)
        else:
            latents = self.device_loop(plan, latents, cond, cfg.guidance_scale, noise)
        looped = time.perf_counter()
        # 3. decode per frame, in chunks
        video = self.decode(latents, cfg.decode_frames(), cfg.decoder)
        self.times = StageTimes(encoded - start, looped - encoded, time.perf_counter() - looped, plan.num_steps)
        self.times.unet_evals = self.unet_evals(cfg)
        if output == "float":
            return video
        return np.round(video.transpose(0, 2, 3, 4, 1) * 255).astype(np.uint8)  # (B, F, H, W, 3)

    @staticmethod
    def noise(shape: tuple[int, ...], cfg: GenerationConfig, plan) -> tuple[np.ndarray, np.ndarray | None]:
        """The initial latents by the noise convention and, for LCM, the step noise drawn after them from the same
        generator, ``(S − 1, *shape)`` (``None`` for other samplers)."""
        if plan.sampler != "lcm":
            return initial_latents(shape, cfg.seed, plan.init_noise_sigma).numpy(), None
        latents, generator = initial_noise(shape, cfg.seed, plan.init_noise_sigma)
        return latents.numpy(), step_noise(generator, shape, plan.num_steps).numpy()

    def host_loop(self, plan, latents: np.ndarray, cond, cfg: GenerationConfig, noise: np.ndarray | None):
        """The C loop over host buffers; a student's g is bound into the one ``denoise(x, t, cond)`` seam."""
        denoise = self.backend.denoise
        if self.single_pass:
            denoise = functools.partial(denoise, guidance=cfg.guidance_scale)
        variance_noise = _variance_noise(latents.shape, cfg.seed) if plan.stochastic and noise is None else None
        return run_loop(
            denoise,
            plan,
            latents,
            cond,
            guidance_scale=cfg.guidance_scale,
            variance_noise=variance_noise,
            step_noise=noise,
            single_pass=self.single_pass,
        )

    def device_loop(
        self, plan, latents: np.ndarray, cond, guidance_scale: float, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """The loop on the backend's device: a cached :class:`GraphedLoop` per configuration, replayed (``graph``)
        or stepped from Python (``device``); LCM's step noise goes in as a static buffer."""
        import torch

        from .cuda_graph import GraphCache

        backend = self.backend
        if plan.stochastic and noise is None:
            raise MindVideoError(
                "expected a sampler without per-step noise draws for the device loop",
                "DDIM with eta > 0",
                "use --loop c, or eta 0",
            )
        if self._graphs is None:
            # TensorRT: one captured shape at a time — every loop shares one execution context, and replaying a
            # graph captured with other input shapes than the context's current ones is not documented as safe
            keep = 1 if backend.name == "tensorrt" else 8
            self._graphs = GraphCache(
                backend.device_unet, backend.device, backend.unet_dtype, max_loops=keep, single_pass=self.single_pass
            )
        x = torch.from_numpy(latents).to(backend.device)
        c = torch.as_tensor(cond).to(backend.device, backend.unet_dtype)
        z = torch.from_numpy(noise).to(backend.device) if plan.stochastic else None  # 1 LCM step: no noise
        loop = self._graphs.get(plan, tuple(x.shape), tuple(c.shape), guidance_scale)
        out = loop(x, c, z) if self.loop == "graph" else loop.run_eager(x, c, z)
        return out.float().cpu().numpy()

    def decode(self, latents: np.ndarray, chunk: int = 16, decoder: str = "vae") -> np.ndarray:
        """(B, C, F, h, w) → (B, 3, F, H, W) float32 in [0, 1] with the VAE decoder or (``decoder="tiny"``) the
        backend's tiny decoder, ``chunk`` frames per call (``GenerationConfig.decode_frames``), at most as many as
        an exported decoder's profile takes."""
        b, c, f, h, w = latents.shape
        chunk = min(chunk, self.decoder_limit(decoder))
        flat = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        images = np.concatenate([self.backend.decode(flat[i : i + chunk], decoder) for i in range(0, b * f, chunk)])
        return images.reshape(b, f, *images.shape[1:]).transpose(0, 2, 1, 3, 4)

    def decoder_limit(self, decoder: str) -> int:
        """The most frames one decode call of an exported decoder takes (its profile's ``frames`` maximum); no limit
        for a backend that runs the module itself."""
        spec = (getattr(self.backend, "specs", None) or {}).get(decoder_network(decoder))
        axis = spec.inputs[0].shape[0] if spec is not None else None
        return spec.axes[axis].max if isinstance(axis, str) else sys.maxsize


def load_runtime(
    backend: str,
    *,
    checkpoint=None,
    engine=None,
    device: str = "cpu",
    dtype: str = "fp32",
    loop: str = "auto",
    threads: int | None = None,
) -> Runtime:
    """A :class:`Runtime` on backend ``backend``; the checkpoint (if given) supplies the data transform."""
    from mindvideo.pipeline import load_transform

    from .backends import make_backend

    return Runtime(
        make_backend(backend, checkpoint=checkpoint, engine=engine, device=device, dtype=dtype, threads=threads),
        transform=load_transform(checkpoint),
        loop=loop,
    )


def _variance_noise(shape: tuple[int, ...], seed: int):
    """DDIM η > 0: one standard normal draw per step from a generator seeded like the PyTorch pipeline's."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed + 1)
    return lambda step: torch.randn(shape, generator=generator).numpy()
