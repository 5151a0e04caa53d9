"""``ExportSpec``: what one exported network looks like from the outside — the single source of the ONNX export's
names and dynamic axes, the TensorRT profile, the runtime's buffers and the verification inputs. It round-trips
through ``manifest.json``, so the runtime rebuilds it without importing a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from mindvideo.errors import MindVideoError

NETWORKS = ("fmri_encoder", "unet", "vae_decoder")
OPTIONAL_NETWORKS = ("tiny_decoder",)  # exported when the checkpoint has the component (CKPT/tiny_decoder)
ATTENTION_MODES = ("onnx", "plugin")  # how the UNet's sparse-causal attention is written (see export/plugin.py)
GRAPH_DTYPES = {"fp32": "float32", "fp16": "float16"}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_GUIDANCE_RANGE = (1.0, 10.0)  # where a student's sample inputs draw g when its config names no range


@dataclasses.dataclass(frozen=True)
class Axis:
    """The range of one dynamic axis: the TensorRT profile's ``min``/``opt``/``max``."""

    min: int
    opt: int
    max: int

    def validate(self, name: str) -> Axis:
        if not 1 <= self.min <= self.opt <= self.max:
            raise MindVideoError(
                f"expected 1 ≤ min ≤ opt ≤ max for the {name} axis",
                f"{self.min}:{self.opt}:{self.max}",
                "fix the range",
            )
        return self

    @classmethod
    def parse(cls, text: str, name: str) -> Axis:
        """``"1:2:4"`` → ``Axis(1, 2, 4)``; a single number ``"4"`` means a static axis ``4:4:4``."""
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3:
            raise MindVideoError(f"expected MIN:OPT:MAX integers for the {name} axis", repr(text), "e.g. 1:2:4")
        return cls(*parts).validate(name)

    def clamp(self, value: int) -> int:
        return max(self.min, min(self.max, value))


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``shape`` holds ints (static) and axis names (dynamic); ``dtype`` a numpy dtype name.

    ``sample_range`` says how :meth:`ExportSpec.sample_inputs` fills an input: ``None`` draws N(0, 1), ``(lo, hi)``
    draws uniformly (diffusion timesteps).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    sample_range: tuple[float, float] | None = None

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape for the given axis sizes."""
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Inputs, outputs and dynamic axes of one exported network; it round-trips through ``manifest.json``
    (:meth:`to_dict` / :meth:`from_dict`).

    Shapes are tuples whose entries are ints (static) or axis names (dynamic). The networks::

        fmri_encoder  fmri (batch, W, V)                                  → cond (batch, L, D)
        unet          sample (batch, 4, frames, h, w), timestep (batch,),
                      encoder_hidden_states (batch, L, D)
                      [, guidance (batch,) — a distilled student only]     → noise_pred (batch, 4, frames, h, w)
        vae_decoder   latent (frames, 4, h, w)                             → images (frames, 3, H, W) in [0, 1]
        tiny_decoder  the same as vae_decoder (only when the checkpoint has a tiny_decoder/)

    The decoder works per frame: its ``frames`` axis counts frame latents (B·F of a batch of clips). The VAE is an
    image model, so a per-frame graph is exactly the model, lets the runtime decode a clip in chunks as frames become
    ready (streaming, bounded activation memory: one SD-1.5 decoder frame at 256² is 620 GFLOP and ~100 MB of
    activations), and needs one dynamic axis instead of two. The runtime turns ``(B, 4, F, h, w)`` into ``(B·F, 4, h,
    w)`` with one transpose.

    A student UNet (``guidance_embedding`` in its config) takes the guidance scale g as a fourth input, ``guidance``
    (batch,) float32 like ``timestep``, and runs one row per clip (no [negative; positive] doubling). A teacher's spec
    has no such input and is unchanged.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: Mapping[str, Axis]
    precision: str = "fp32"
    trace_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    attention: str = "onnx"  # the UNet's sparse-causal attention: plain ops, or one TensorRT plugin node
    # a student UNet: {"guidance_range": [lo, hi] | None, "schedulers": [...] | None} from its config, so a runtime
    # refuses the schedulers it was not distilled for without the checkpoint; None for a teacher
    student: Mapping[str, Any] | None = None

    # ---------------------------------------------------------------------------------------- shapes

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dims(self, which: str = "opt", **overrides: int) -> dict[str, int]:
        """Axis sizes at the profile's ``min``/``opt``/``max``, with ``overrides`` (checked against the range)."""
        dims = {name: getattr(axis, which) for name, axis in self.axes.items()}
        for name, value in overrides.items():
            if name not in self.axes:
                raise MindVideoError(f"expected an axis of {self.name} among {list(self.axes)}", repr(name))
            axis = self.axes[name]
            if not axis.min <= value <= axis.max:
                raise MindVideoError(
                    f"expected {name} in [{axis.min}, {axis.max}] for the {self.name} export",
                    str(value),
                    "re-export with a wider range (--batch / --frames MIN:OPT:MAX)",
                )
            dims[name] = value
        return dims

    def shapes(self, **dims: int) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output; missing axes take their ``opt`` size."""
        resolved = self.dims("opt", **dims)
        return {t.name: t.resolve(resolved) for t in (*self.inputs, *self.outputs)}

    def max_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes at the top of the profile: what a runtime preallocates once."""
        return {t.name: t.resolve(self.dims("max")) for t in (*self.inputs, *self.outputs)}

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """``{input: (min_shape, opt_shape, max_shape)}``: one TensorRT optimisation profile."""
        lo, opt, hi = self.dims("min"), self.dims("opt"), self.dims("max")
        return {t.name: (t.resolve(lo), t.resolve(opt), t.resolve(hi)) for t in self.inputs}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: ``{tensor: {index: axis name}}``."""
        table = {}
        for t in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                table[t.name] = named
        return table

    # ---------------------------------------------------------------------------------------- inputs

    def sample_inputs(self, dims: Mapping[str, int] | None = None, *, seed: int = 0) -> dict[str, torch.Tensor]:
        """Seeded float32 CPU inputs at ``dims`` (default: ``opt``); cast them to ``TensorSpec.dtype`` to feed the
        exported graph."""
        resolved = self.dims("opt", **(dims or {}))
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.inputs:
            shape = t.resolve(resolved)
            if t.sample_range is None:
                out[t.name] = torch.randn(shape, generator=gen)
            else:
                lo, hi = t.sample_range
                out[t.name] = lo + (hi - lo) * torch.rand(shape, generator=gen)
        return out

    def trace_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs for tracing: every dynamic axis ≥ 2 and pairwise distinct where the range allows, so no size is
        baked in as 1 and no two axes can be confused."""
        return self.sample_inputs(self.trace_dims or None, seed=1234)

    # ---------------------------------------------------------------------------------------- manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "inputs": [_tensor_to_dict(t) for t in self.inputs],
            "outputs": [_tensor_to_dict(t) for t in self.outputs],
            "axes": {k: dataclasses.asdict(a) for k, a in self.axes.items()},
            "trace_dims": dict(self.trace_dims),
            # recorded only when not the default, so exports made before the option existed keep their cache keys
            **({"attention": self.attention} if self.attention != "onnx" else {}),
            **({"student": dict(self.student)} if self.student is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportSpec:
        return cls(
            name=data["name"],
            precision=data["precision"],
            inputs=tuple(_tensor_from_dict(t) for t in data["inputs"]),
            outputs=tuple(_tensor_from_dict(t) for t in data["outputs"]),
            axes={k: Axis(**a) for k, a in data["axes"].items()},
            trace_dims=dict(data.get("trace_dims", {})),
            attention=_attention(data.get("attention", "onnx")),
            student=data.get("student"),
        )


def _attention(mode: str) -> str:
    if mode not in ATTENTION_MODES:
        raise MindVideoError(f"expected an attention mode among {list(ATTENTION_MODES)} in the manifest", repr(mode))
    return mode


def _tensor_to_dict(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "sample_range": t.sample_range}


def _tensor_from_dict(d: Mapping[str, Any]) -> TensorSpec:
    rng = d.get("sample_range")
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], None if rng is None else tuple(rng))


# ------------------------------------------------------------------------------------------------ building the specs


@dataclasses.dataclass(frozen=True)
class NetworkShapes:
    """The model-config facts the specs need (read from the checkpoint's ``config.json`` files, no weights)."""

    window: int  # fMRI frames per window (W)
    voxels: int  # voxels per frame (V)
    cond_tokens: int  # L (77 for SD-1.5)
    cond_dim: int  # D (768 for SD-1.5)
    latent_channels: int  # 4
    unet_out_channels: int  # 4
    vae_scale: int  # pixels per latent: 2 ** (VAE levels - 1), 8 for SD
    image_channels: int  # 3
    default_latent: int  # the UNet's sample_size
    guidance_input: bool = False  # a distilled student: g is a UNet input
    guidance_range: tuple[float, float] | None = None  # the g range it was distilled for (sample inputs draw there)
    schedulers: tuple[str, ...] | None = None  # the schedulers a student was distilled for (None: any)

    @classmethod
    def from_configs(
        cls, encoder: Mapping[str, Any], unet: Mapping[str, Any], vae: Mapping[str, Any]
    ) -> NetworkShapes:
        """From the three ``config.json`` dicts (FMRIEncoderConfig, VideoUNetConfig, diffusers AutoencoderKL)."""
        if unet.get("cross_attention_dim", 768) != encoder.get("out_dim", 768):
            raise MindVideoError(
                "expected the UNet's cross_attention_dim to equal the fMRI encoder's out_dim",
                f"{unet.get('cross_attention_dim')} vs {encoder.get('out_dim')}",
                "pair the UNet with its own encoder",
            )
        return cls(
            window=int(encoder.get("window_size", 2)),
            voxels=int(encoder.get("num_voxels", 4656)),
            cond_tokens=int(encoder.get("out_channel", 77)),
            cond_dim=int(encoder.get("out_dim", 768)),
            latent_channels=int(unet.get("in_channels", 4)),
            unet_out_channels=int(unet.get("out_channels", 4)),
            vae_scale=2 ** (len(vae.get("block_out_channels", (1, 1, 1, 1))) - 1),
            image_channels=int(vae.get("out_channels", 3)),
            default_latent=int(unet.get("sample_size", 64)),
            guidance_input=bool(unet.get("guidance_embedding", False)),
            guidance_range=None if unet.get("guidance_range") is None else tuple(map(float, unet["guidance_range"])),
            schedulers=None if unet.get("schedulers") is None else tuple(unet["schedulers"]),
        )


@dataclasses.dataclass(frozen=True)
class SpecOptions:
    """User choices that shape the graphs: precisions, image size, and the batch/frame ranges.

    ``batch`` counts UNet/encoder rows (a guided teacher clip is 2 rows, a student's 1); ``frames`` is the clip
    length F; the decoder's ``frames`` axis (frame latents per call) defaults to ``1 : frames.opt : frames.max``.
    """

    precision: str = "fp32"
    vae_precision: str = "fp32"
    height: int | None = None
    width: int | None = None
    batch: Axis = Axis(1, 2, 4)
    frames: Axis = Axis(1, 8, 16)
    decoder_frames: Axis | None = None
    attention: str = "onnx"

    def validate(self) -> SpecOptions:
        for label, value in (("--precision", self.precision), ("--vae-precision", self.vae_precision)):
            if value not in GRAPH_DTYPES:
                raise MindVideoError(f"expected {label} among {list(GRAPH_DTYPES)} for ONNX", repr(value))
        if self.attention not in ATTENTION_MODES:
            raise MindVideoError(f"expected --attention among {list(ATTENTION_MODES)}", repr(self.attention))
        self.batch.validate("batch")
        self.frames.validate("frames")
        if self.decoder_frames is not None:
            self.decoder_frames.validate("decoder frames")
        return self


def latent_size(shapes: NetworkShapes, options: SpecOptions) -> tuple[int, int]:
    """(h, w) of the latent; the image size (default: the UNet's ``sample_size`` latents) must be a positive multiple
    of the VAE's scale, ``2 ** (len(block_out_channels) - 1)`` (8 for SD's VAE)."""
    default = shapes.default_latent * shapes.vae_scale
    height = default if options.height is None else options.height
    width = default if options.width is None else options.width
    if height % shapes.vae_scale or width % shapes.vae_scale or height <= 0 or width <= 0:
        raise MindVideoError(
            f"expected an image size divisible by {shapes.vae_scale}", f"{height}×{width}", "pick e.g. 256×256"
        )
    return height // shapes.vae_scale, width // shapes.vae_scale


def _guidance_input(shapes: NetworkShapes) -> tuple[TensorSpec, ...]:
    """A student's ``guidance`` input (g per row, fp32 like the timestep: its embedding is fp32); none for teachers."""
    if not shapes.guidance_input:
        return ()
    return (TensorSpec("guidance", ("batch",), "float32", shapes.guidance_range or DEFAULT_GUIDANCE_RANGE),)


def _student(shapes: NetworkShapes) -> dict[str, Any] | None:
    if not shapes.guidance_input:
        return None
    return {
        "guidance_range": None if shapes.guidance_range is None else list(shapes.guidance_range),
        "schedulers": None if shapes.schedulers is None else list(shapes.schedulers),
    }


def build_specs(shapes: NetworkShapes, options: SpecOptions, *, tiny_decoder: bool = False) -> dict[str, ExportSpec]:
    """The three specs for one checkpoint and one set of options (four with ``tiny_decoder``: the distilled decoder,
    whose inputs, outputs and profile are the VAE decoder's)."""
    options.validate()
    h, w = latent_size(shapes, options)
    dtype, vae_dtype = GRAPH_DTYPES[options.precision], GRAPH_DTYPES[options.vae_precision]
    batch, frames = options.batch, options.frames
    dec_frames = options.decoder_frames or Axis(1, frames.opt, frames.max)
    trace = {"batch": batch.clamp(2), "frames": frames.clamp(3)}
    encoder = ExportSpec(
        "fmri_encoder",
        inputs=(TensorSpec("fmri", ("batch", shapes.window, shapes.voxels), dtype),),
        outputs=(TensorSpec("cond", ("batch", shapes.cond_tokens, shapes.cond_dim), dtype),),
        axes={"batch": batch},
        precision=options.precision,
        trace_dims={"batch": trace["batch"]},
    )
    latent = ("batch", shapes.latent_channels, "frames", h, w)
    unet = ExportSpec(
        "unet",
        inputs=(
            TensorSpec("sample", latent, dtype),
            TensorSpec("timestep", ("batch",), "float32", (0.0, 999.0)),  # fp32 always: the embedding is fp32
            TensorSpec("encoder_hidden_states", ("batch", shapes.cond_tokens, shapes.cond_dim), dtype),
            *_guidance_input(shapes),
        ),
        outputs=(TensorSpec("noise_pred", ("batch", shapes.unet_out_channels, "frames", h, w), dtype),),
        axes={"batch": batch, "frames": frames},
        precision=options.precision,
        trace_dims=trace,
        attention=options.attention,
        student=_student(shapes),
    )
    size = (h * shapes.vae_scale, w * shapes.vae_scale)
    decoder = ExportSpec(
        "vae_decoder",
        inputs=(TensorSpec("latent", ("frames", shapes.latent_channels, h, w), vae_dtype),),
        outputs=(TensorSpec("images", ("frames", shapes.image_channels, *size), vae_dtype),),
        axes={"frames": dec_frames},
        precision=options.vae_precision,
        trace_dims={"frames": dec_frames.clamp(2)},
    )
    tiny = (dataclasses.replace(decoder, name="tiny_decoder"),) if tiny_decoder else ()
    return {s.name: s for s in (encoder, unet, decoder, *tiny)}
