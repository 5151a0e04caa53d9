"""What the runtime backends share: a UNet's student facts, the networks' geometry, guidance, decoder and profile
checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mindvideo.errors import MindVideoError


@dataclass(frozen=True)
class UNetFacts:
    """What the runtime needs to know of a UNet to drive it (the fields :func:`mindvideo.pipeline.check_student`
    reads): a student takes g as an input, and may name its g range and the schedulers it was distilled for."""

    guidance_embedding: bool = False
    guidance_range: tuple[float, float] | None = None
    schedulers: tuple[str, ...] | None = None

    @classmethod
    def from_spec(cls, spec) -> UNetFacts:
        """From an exported UNet's :class:`~mindvideo.export.ExportSpec` (its ``guidance`` input and ``student``)."""
        if "guidance" not in spec.input_names:
            return cls()
        student = spec.student or {}
        low_high, schedulers = student.get("guidance_range"), student.get("schedulers")
        return cls(
            True,
            None if low_high is None else (float(low_high[0]), float(low_high[1])),
            None if schedulers is None else tuple(schedulers),
        )


def guidance_rows(guidance, rows: int) -> np.ndarray:
    """g as the (rows,) float32 array a student's ``guidance`` input takes (from a float or per-row values)."""
    values = np.asarray(guidance, dtype=np.float32).reshape(-1)
    if values.size not in (1, rows):
        raise MindVideoError(f"expected one guidance value or {rows}", f"{values.size} values", "pass g as a float")
    return np.ascontiguousarray(np.broadcast_to(values, (rows,)))


def check_guidance(facts: UNetFacts, guidance, where: str) -> None:
    """A student's UNet needs g, a teacher's takes none (the same refusals as the PyTorch UNet's)."""
    if facts.guidance_embedding and guidance is None:
        raise MindVideoError(
            f"expected a guidance input g for the student UNet of {where}",
            "guidance=None",
            "bind it: functools.partial(backend.denoise, guidance=g)",
        )
    if not facts.guidance_embedding and guidance is not None:
        raise MindVideoError(
            f"expected no guidance input for the teacher UNet of {where}",
            f"guidance={guidance!r}",
            "use the two-pass guided loop (cond = [negative; positive]), or export a student",
        )


DECODER_NETWORKS = {"vae": "vae_decoder", "tiny": "tiny_decoder"}  # --decoder → the network that runs it


def decoder_network(decoder: str) -> str:
    """The network of ``decoder`` (``"vae"`` → ``vae_decoder``, ``"tiny"`` → ``tiny_decoder``)."""
    if decoder not in DECODER_NETWORKS:
        raise MindVideoError(f"expected a decoder among {list(DECODER_NETWORKS)}", repr(decoder), "pick one")
    return DECODER_NETWORKS[decoder]


def check_decoder_graph(specs: dict, network: str, export_dir, export_format: str = "onnx") -> None:
    """Refuse a decoder network the export folder does not have, saying how to get the tiny decoder's graph."""
    if network in specs:
        return
    raise MindVideoError(
        f"expected a {network} graph in the export folder {export_dir} for --decoder tiny",
        f"networks {sorted(specs)}",
        "train one with `mindvideo train tiny-decoder --set vae=CKPT …`, copy OUT/model/tiny_decoder into the "
        f"checkpoint and re-export (`mindvideo export --checkpoint CKPT --out {export_dir} --format "
        f"{export_format}`), or use --decoder vae",
    )


@dataclass(frozen=True)
class Geometry:
    """What a backend's networks take: fMRI windows (W, V) and latents (C, h, w) decoded ``vae_factor``× larger."""

    window_size: int
    num_voxels: int
    latent_channels: int
    latent_size: tuple[int, int]
    vae_factor: int


def check_profile(spec, shape: tuple, dims: list[int], name: str) -> None:
    """Refuse a shape outside the exported profile (static sizes and min..max of dynamic axes) with a clear error."""
    if len(shape) != len(dims):
        raise MindVideoError(f"expected {name} of rank {len(shape)} for {spec.name}", f"shape {tuple(dims)}")
    for axis, size in zip(shape, dims):
        if isinstance(axis, int):
            ok, allowed = size == axis, str(axis)
        else:
            rng = spec.axes[axis]
            ok, allowed = rng.min <= size <= rng.max, f"{axis} in {rng.min}..{rng.max}"
        if not ok:
            raise MindVideoError(
                f"expected {spec.name}.{name} within the exported profile ({allowed})",
                f"shape {tuple(dims)}",
                "re-export with a larger --batch/--frames range or the right --height/--width",
            )
