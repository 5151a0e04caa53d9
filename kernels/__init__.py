"""Attention kernels for the video UNet, behind a backend registry (:mod:`mindvideo.kernels.registry`).

``sparse_causal_attention`` and ``temporal_attention`` dispatch to the highest-priority registered backend that
accepts the inputs: ``triton`` (CUDA, fp16/bf16), ``sdpa``, ``reference`` (fp32; the test oracle and the ONNX graph)
and, by name only, ``triton-interpret`` (the kernels on Triton's CPU interpreter); ``mindvideo.export`` adds
``onnx-plugin``. Importing this package never touches CUDA and never imports Triton.
"""

from __future__ import annotations

if __name__ == "mindvideo.kernels":
    from .ops import sparse_causal_attention, temporal_attention
    from .reference import FrameOffsets, gather_frames, source_frames
    from .registry import backends, register, select, use_backend

    __all__ = [
        "FrameOffsets",
        "backends",
        "gather_frames",
        "register",
        "select",
        "source_frames",
        "sparse_causal_attention",
        "temporal_attention",
        "use_backend",
    ]
else:  # the folder imported by its bare name from the repo root: hand over to the installed 'kernels' (if any)
    from mindvideo._bare_names import hand_over

    hand_over(__name__, __file__)
