"""Attention kernels for the video UNet, behind a backend registry.

``sparse_causal_attention`` and ``temporal_attention`` dispatch to the best registered backend that accepts the
inputs (see :mod:`mindvideo.kernels.registry`):

========================  ========  ==========================================================================
backend                   priority  accepts
========================  ========  ==========================================================================
``triton``                20        CUDA tensors in fp16/bf16, head dim ≤ 256 (temporal: ≤ 128 frames), Triton
                                    installed, not while tracing/exporting to ONNX (fp32 → SDPA)
``sdpa``                  10        everything (gather/concat + ``F.scaled_dot_product_attention``)
``reference``             0         everything (plain matmul/softmax in fp32: the oracle, and the ONNX graph)
``triton-interpret``      -10       CPU tensors (fp16/fp32; bf16 is not supported by Triton's interpreter)
                                    under ``TRITON_INTERPRET=1``; never chosen automatically, only by name
                                    (tests run the Triton kernels on CPU this way)
========================  ========  ==========================================================================

``mindvideo.export`` adds ``onnx-plugin`` for the sparse-causal op (priority -100, only while exporting with
``--attention plugin``: one TensorRT-plugin node in the graph).

Importing this package never touches CUDA and never imports Triton: the Triton modules load on first use.
"""

from __future__ import annotations

if __name__ == "mindvideo.kernels":
    from .ops import (
        FrameOffsets,
        backends,
        gather_frames,
        register,
        select,
        source_frames,
        sparse_causal_attention,
        temporal_attention,
        use_backend,
    )

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
