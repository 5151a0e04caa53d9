"""``MindVideoPipeline``: fMRI windows → video (MinD-Video §3.4).

encode (fMRI encoder, positive and negative windows) → guided denoising of ``(B, 4, F, h, w)`` latents with the
video UNet → VAE decode per frame, in chunks. Matches the reference pipeline step for step (noise convention,
guidance order, VAE scaling), so the same checkpoint, seed and settings give the same video. A distilled student
(its UNet config has ``guidance_embedding``) encodes only the positive windows and runs one UNet pass per step with
the guidance scale as an input, with the schedulers its config names (e.g. 4 LCM steps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mindvideo.checkpoint import load_components
from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, VideoUNet
from mindvideo.models.tiny_decoder import TinyDecoder, load_tiny_decoder
from mindvideo.sampling import SCHEDULERS, guided_sample, initial_noise, make_scheduler, warm_latents

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DECODERS = ("vae", "tiny")
# unless ``tiny_decode_chunk`` is set, the tiny decoder decodes this many times ``decode_chunk`` frames per call: at
# SD-1.5 size the default tiny decoder's activations per frame are a quarter of the VAE decoder's (32 against 128
# full-resolution channels, no attention, no norms), so memory stays bounded the same, and fewer, larger calls are
# faster (60 demo frames on one thread, measured alone: 25 → 20 ms). A wider tiny decoder: set tiny_decode_chunk.
TINY_CHUNK_FACTOR = 4


@dataclass
class GenerationConfig:
    """Sampling settings; the defaults are the reference's evaluation settings except the step count."""

    num_frames: int = 6
    height: int | None = None  # default: the UNet's sample_size × the VAE factor
    width: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 12.5
    scheduler: str = "ddim"
    seed: int = 3407
    eta: float = 0.0
    decode_chunk: int = 16  # frames per VAE decode call
    decoder: str = "vae"  # "vae", or "tiny": the checkpoint's distilled tiny_decoder/ (much cheaper, less detail)
    tiny_decode_chunk: int | None = None  # frames per tiny-decoder call; None: TINY_CHUNK_FACTOR × decode_chunk

    def decode_frames(self) -> int:
        """Frames per decode call for ``decoder``: ``decode_chunk`` (the VAE), ``tiny_decode_chunk`` or
        ``TINY_CHUNK_FACTOR × decode_chunk`` (the tiny decoder)."""
        chunks = (self.decode_chunk, self.tiny_decode_chunk)
        if any(c is not None and (not isinstance(c, int) or c < 1) for c in chunks):
            raise MindVideoError(
                "expected decode_chunk and tiny_decode_chunk as whole numbers ≥ 1 (tiny_decode_chunk may be None)",
                f"decode_chunk={self.decode_chunk!r}, tiny_decode_chunk={self.tiny_decode_chunk!r}",
                "pick frames per decode call, e.g. 16",
            )
        if self.decoder != "tiny":
            return self.decode_chunk
        return self.tiny_decode_chunk or TINY_CHUNK_FACTOR * self.decode_chunk


class MindVideoPipeline:
    """The PyTorch pipeline. ``pipe(fmri (B, W, V) or (W, V)) -> video``; see :meth:`__call__`."""

    def __init__(
        self,
        fmri_encoder: FMRIEncoder,
        unet: VideoUNet,
        vae,
        scheduler_config: dict,
        transform=None,
        tiny_decoder: TinyDecoder | None = None,
    ):
        self.fmri_encoder, self.unet, self.vae = fmri_encoder.eval(), unet.eval(), vae.eval()
        self.tiny_decoder = None if tiny_decoder is None else tiny_decoder.eval()
        self.checkpoint: Path | None = None  # where from_pretrained loaded from: tiny_decoder/ is read on first use
        self.scheduler_config = scheduler_config
        self.transform = transform  # the fitted FMRITransform of CKPT/data_transform, if the checkpoint has one
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_scaling = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str = "fp32", device: str = "cpu", num_voxels: int | None = None
    ) -> MindVideoPipeline:
        """Load a checkpoint folder (ours or the reference layout). fp16 keeps the VAE in fp32 (fp16 VAE NaNs)."""
        parts = load_components(path, num_voxels=num_voxels)
        transform = load_transform(path)
        pipe = cls(parts["fmri_encoder"], parts["unet"], parts["vae"], parts["scheduler_config"], transform)
        pipe.checkpoint = Path(path)
        return pipe.to(device, dtype)

    def to(self, device: str | torch.device, dtype: str = "fp32") -> MindVideoPipeline:
        if dtype not in DTYPES:
            raise MindVideoError(f"expected dtype among {list(DTYPES)}", repr(dtype), "pass --dtype fp32|fp16|bf16")
        device = _check_device(device)
        torch_dtype = DTYPES[dtype]
        self.fmri_encoder.to(device, torch_dtype)
        self.unet.to(device, torch_dtype)
        move(self.vae, device, torch.float32 if torch_dtype == torch.float16 else torch_dtype)
        if self.tiny_decoder is not None:
            move(self.tiny_decoder, device, next(self.vae.parameters()).dtype)
        return self

    def load_tiny_decoder(self) -> TinyDecoder:
        """The tiny decoder (``CKPT/tiny_decoder``, loaded on first use); :class:`MindVideoError` if there is none."""
        if self.tiny_decoder is None:
            if self.checkpoint is None:
                raise MindVideoError(
                    "expected a tiny decoder for decoder='tiny'", "none", "pass tiny_decoder= or load a checkpoint"
                )
            decoder = load_tiny_decoder(self.checkpoint)
            self.tiny_decoder = move(decoder, self.device, next(self.vae.parameters()).dtype)
        return self.tiny_decoder

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def num_voxels(self) -> int:
        return self.fmri_encoder.config.num_voxels

    @property
    def window_size(self) -> int:
        return self.fmri_encoder.config.window_size

    # ------------------------------------------------------------------------------------------------ stages

    def check_fmri(self, fmri: np.ndarray | torch.Tensor, name: str = "fMRI") -> torch.Tensor:
        """(W, V) or (B, W, V) → float32 (B, W, V) for this encoder; see :func:`check_fmri`."""
        return check_fmri(fmri, self.window_size, self.num_voxels, name)

    def windows_from_scan(self, path: str | Path, first: int = 0, last: int | None = None) -> np.ndarray:
        """A raw run → model windows ``(N, W, V)`` via the checkpoint's data transform (:func:`scan_windows`)."""
        return scan_windows(self.transform, path, first, last)

    @torch.no_grad()
    def encode(self, fmri: torch.Tensor, negative_fmri: torch.Tensor | None, guided: bool) -> torch.Tensor:
        """Conditions ``(2B, L, D)`` = [negative; positive] (or ``(B, L, D)`` unguided). The default negative is
        the data transform's mean training window when the checkpoint has one, else the mean fMRI of the input set
        (the reference's choice)."""
        dtype, device = self.fmri_encoder.dtype, self.device
        cond = self.fmri_encoder(fmri.to(device, dtype))
        if not guided:
            return cond
        if negative_fmri is None and self.transform is not None:
            negative_fmri = torch.from_numpy(self.transform.negative_fmri)[None]
        if negative_fmri is None:
            negative_fmri = fmri.mean(dim=0, keepdim=True)
        neg = self.fmri_encoder(negative_fmri.to(device, dtype))
        return torch.cat([neg.expand_as(cond) if neg.shape[0] == 1 else neg, cond])

    def denoise(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The backend seam: eager PyTorch UNet (``guidance``: the (B,) g input of a student)."""
        return self.unet(x.to(self.unet.dtype), t, cond, guidance=guidance)

    @property
    def is_student(self) -> bool:
        """A distilled student: one UNet pass per step, g as an input, only the positive condition."""
        return bool(self.unet.config.guidance_embedding)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 16, decoder: str = "vae") -> torch.Tensor:
        """(B, 4, F, h, w) latents → (B, 3, F, H, W) float32 in [0, 1], decoding ``chunk`` frames per call
        (:meth:`GenerationConfig.decode_frames` picks it for a config) with the VAE decoder or (``decoder="tiny"``)
        the tiny decoder; both take the latents divided by the VAE scaling."""
        b, c, f, h, w = latents.shape
        flat = latents.transpose(1, 2).reshape(b * f, c, h, w) / self.vae_scaling  # (B·F, 4, h, w)
        if decoder == "tiny":
            tiny = self.load_tiny_decoder()
            frames = [tiny(flat[i : i + chunk].to(tiny.dtype)).float() for i in range(0, b * f, chunk)]
        else:
            dtype = next(self.vae.parameters()).dtype
            frames = [self.vae.decode(flat[i : i + chunk].to(dtype)).sample.float() for i in range(0, b * f, chunk)]
        video = torch.cat(frames).reshape(b, f, 3, h * self.vae_scale_factor, w * self.vae_scale_factor)
        return (video / 2 + 0.5).clamp(0, 1).transpose(1, 2).cpu()  # (B, 3, F, H, W)

    # ------------------------------------------------------------------------------------------------ the call

    def check_generation(self, cfg: GenerationConfig) -> tuple[int, int]:
        """Validated (height, width) for ``cfg`` (and the scheduler and g for a student, :func:`check_student`)."""
        default = self.unet.config.sample_size * self.vae_scale_factor
        size = generation_size(cfg, (default, default), self.vae_scale_factor, decoders=DECODERS)
        if cfg.decoder == "tiny":
            self.load_tiny_decoder()  # a missing tiny_decoder/ is reported before any denoising
        check_student(self.unet.config, cfg.scheduler, cfg.guidance_scale)
        return size

    @torch.no_grad()
    def __call__(
        self,
        fmri: np.ndarray | torch.Tensor,
        negative_fmri: np.ndarray | torch.Tensor | None = None,
        config: GenerationConfig | None = None,
        *,
        output: str = "uint8",
        progress: bool = True,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
        return_latents: bool = False,
        **overrides,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """Reconstruct videos from fMRI windows.

        ``fmri``: (W, V) or (B, W, V). ``negative_fmri``: (W, V) or (B, W, V); default the batch mean.
        Returns ``(B, F, H, W, 3)`` uint8 (``output="uint8"``) or ``(B, 3, F, H, W)`` float32 in [0, 1]
        (``output="float"``, the reference's layout).

        Warm start: ``init_latents`` (a previous clip's final latents, this call's latent shape) re-noised to timestep
        index ⌊(1 − ``strength``)·S⌋ replace the pure-noise start (the noise is the seed's initial draw at unit
        scale); only the remaining steps run. ``return_latents``: also return the final latents (B, 4, F, h, w).
        """
        cfg = config or GenerationConfig()
        if overrides:
            cfg = GenerationConfig(**{**cfg.__dict__, **overrides})
        height, width = self.check_generation(cfg)
        x = self.check_fmri(fmri)
        neg = None if negative_fmri is None else self.check_fmri(negative_fmri, "negative fMRI")
        if neg is not None:
            check_negative_rows(neg.shape[0], x.shape[0])
            if self.is_student:
                log.warning("a distilled student ignores the negative fMRI: its negative was fixed at distillation")
        guided = cfg.guidance_scale > 1.0 and not self.is_student
        # 1. conditions (a student: the positive ones only)
        cond = self.encode(x, neg, guided)
        # 2. noise (reference convention; LCM's step noise from the same generator), guided denoising
        scheduler = make_scheduler(self.scheduler_config, cfg.scheduler)
        shape = (
            x.shape[0],
            self.unet.config.in_channels,
            cfg.num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        latents, generator = initial_noise(shape, cfg.seed, float(scheduler.init_noise_sigma))
        latents, start = latents.to(self.device, cond.dtype), 0
        if init_latents is not None:
            check_warm_start(strength, tuple(init_latents.shape), shape)
            noise = latents / float(scheduler.init_noise_sigma)
            previous = init_latents.to(self.device, cond.dtype)
            latents, start = warm_latents(scheduler, previous, noise, cfg.num_inference_steps, strength)
        if cfg.scheduler != "lcm":
            generator = torch.Generator("cpu").manual_seed(cfg.seed + 1) if cfg.eta > 0 else None
        with tqdm(total=cfg.num_inference_steps - start, desc="denoising", disable=not progress, leave=False) as bar:
            latents = guided_sample(
                self.denoise,
                scheduler,
                latents,
                cond,
                cfg.guidance_scale,
                cfg.num_inference_steps,
                eta=cfg.eta,
                generator=generator,
                progress=bar.update,
                single_pass=self.is_student,
                start=start,
            )
        # 3. decode per frame
        video = self.decode(latents, cfg.decode_frames(), cfg.decoder)
        out = video if output == "float" else (video.permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8)
        return (out.numpy(), latents) if return_latents else out.numpy()  # (B, F, H, W, 3) uint8 or (B, 3, F, H, W)


def check_warm_start(strength: float, found: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """A warm start needs 0 < strength ≤ 1 and previous latents of this call's latent shape."""
    if not 0.0 < strength <= 1.0:
        raise MindVideoError("expected a warm-start strength in (0, 1]", repr(strength), "pass e.g. 0.5")
    if found != expected:
        raise MindVideoError(
            "expected previous latents of this call's latent shape for a warm start",
            f"{found}, not {expected}",
            "pass the final latents of a call with the same frames, size and batch",
        )


def generation_size(
    cfg: GenerationConfig, default: tuple[int, int], factor: int, decoders: tuple[str, ...] = DECODERS
) -> tuple[int, int]:
    """Validated (height, width) of ``cfg`` (``default`` where unset; multiples of the VAE ``factor``), with at least
    one frame and one step, a known scheduler and a decoder among the caller's ``decoders`` — the checks every
    generator shares."""
    height = default[0] if cfg.height is None else cfg.height  # 0 is a size (refused), not "unset"
    width = default[1] if cfg.width is None else cfg.width
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise MindVideoError(
            f"expected height and width to be positive multiples of {factor}", f"{height}×{width}", "pick e.g. 256×256"
        )
    counts = (("frame", "--frames", "num_frames"), ("denoising step", "--steps", "num_inference_steps"))
    for what, flag, name in counts:
        if getattr(cfg, name) < 1:
            raise MindVideoError(
                f"expected at least 1 {what} ({flag} / {name})", f"{flag} {getattr(cfg, name)}", f"raise {flag}"
            )
    if cfg.scheduler not in SCHEDULERS:
        raise MindVideoError(f"expected a scheduler among {SCHEDULERS}", repr(cfg.scheduler), "pick one")
    if cfg.decoder not in decoders:
        raise MindVideoError(f"expected a decoder among {list(decoders)}", repr(cfg.decoder), "pick one")
    return height, width


def check_student(unet_config, scheduler: str, guidance: float) -> None:
    """A UNet that names its ``schedulers`` (a distilled student) refuses others; a student warns for a guidance
    scale outside the ``guidance_range`` it was trained on (its output there is an extrapolation)."""
    allowed = unet_config.schedulers
    if allowed is not None and scheduler not in allowed:
        raise MindVideoError(
            f"expected a scheduler among {list(allowed)} (the ones this distilled UNet was trained for)",
            repr(scheduler),
            f"pass --scheduler {allowed[0]}" + (" with few steps (e.g. --steps 4)" if allowed[0] == "lcm" else ""),
        )
    low_high = unet_config.guidance_range
    if unet_config.guidance_embedding and low_high is not None and not low_high[0] <= guidance <= low_high[1]:
        log.warning(
            "guidance scale %g is outside the range [%g, %g] this student was distilled for; expect poorer videos",
            guidance,
            *low_high,
        )


def check_negative_rows(rows: int, inputs: int) -> None:
    """A negative condition is one window for all inputs or one per input."""
    if rows not in (1, inputs):
        raise MindVideoError(
            "expected one negative window or one per input window",
            f"{rows} for {inputs} inputs",
            "pass a (window, voxels) array",
        )


def load_transform(checkpoint: str | Path | None):
    """The fitted ``FMRITransform`` of ``CKPT/data_transform``, or ``None`` when the checkpoint has none."""
    if checkpoint is None or not (Path(checkpoint) / "data_transform").is_dir():
        return None
    from mindvideo.data import FMRITransform

    return FMRITransform.load(Path(checkpoint) / "data_transform")


def scan_windows(transform, path: str | Path, first: int = 0, last: int | None = None) -> np.ndarray:
    """A raw run (NIfTI / CIFTI / array file) → model windows ``(N, W, V)`` for TRs ``first … last-1``, through the
    fitted data transform (exactly the training preprocessing)."""
    if transform is None:
        raise MindVideoError(
            "expected a data_transform/ folder in the checkpoint to read raw scans",
            "none",
            "copy the prepared dataset's data_transform/ into the checkpoint, or pass preprocessed windows",
        )
    windows = transform.windows(transform.apply(transform.load_run(path)))
    selected = windows[first:last]
    if len(selected) == 0:
        raise MindVideoError(
            f"expected TRs {first}:{last} to exist in {path}", f"{len(windows)} windows", "change --trs"
        )
    return selected


def check_fmri(fmri: np.ndarray | torch.Tensor, window: int, voxels: int, name: str = "fMRI") -> torch.Tensor:
    """(W, V) or (B, W, V) finite numbers → float32 (B, W, V); anything else raises MindVideoError."""
    x = torch.as_tensor(np.asarray(fmri) if not isinstance(fmri, torch.Tensor) else fmri)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise MindVideoError(
            f"expected {name} shaped (window, voxels) = ({window}, {voxels}) or (batch, {window}, {voxels})",
            f"an array of rank {x.ndim} {tuple(x.shape)}",
            "reshape the input",
        )
    if tuple(x.shape[1:]) != (window, voxels):
        fix = "bring the data to the encoder's voxels with the data transform the checkpoint was trained with"
        fix += " (CKPT/data_transform: generate --scan, mindvideo data prepare)"
        if x.shape[1] == window:  # only the voxel count differs: a random checkpoint can be made to fit
            fix += f", or make a random checkpoint for this data: mindvideo init --num-voxels {x.shape[2]}"
        raise MindVideoError(
            f"expected {name} windows of {window} TRs × {voxels} voxels (the encoder's num_voxels)",
            f"{tuple(x.shape[1:])}",
            fix,
        )
    if not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32, torch.int64)):
        raise MindVideoError(f"expected numeric {name}", str(x.dtype), "save the array as float32")
    x = x.float()
    if not torch.isfinite(x).all():
        raise MindVideoError(
            f"expected finite {name} values",
            f"{int((~torch.isfinite(x)).sum())} NaN/inf",
            "fill or drop the bad voxels in preprocessing",
        )
    return x


def move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(device[, dtype])``, casting only when needed (diffusers warns on every dtype cast of a VAE)."""
    current = next(module.parameters()).dtype
    return module.to(device) if current == dtype else module.to(device, dtype)


def _check_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MindVideoError(
            "expected a CUDA device for --device cuda",
            "torch.cuda.is_available() is False",
            "use --device cpu or install a CUDA build of torch",
        )
    return device
