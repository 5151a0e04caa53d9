"""The runtime engine: backends behind one ``eps = denoise(x, t, cond)`` seam, and the sampling loop that drives them.

The loop lives in three layers, each importable without a GPU:

- :mod:`mindvideo.engine.schedule`: :func:`make_plan` unrolls a diffusers scheduler (DDIM, DPM-Solver++(2M), Euler,
  LCM) into a :class:`SamplingPlan` of per-step coefficients of one fused guidance + update.
- :mod:`mindvideo.engine.host_loop`: :func:`run_loop` / :func:`fused_update` over float32 host buffers, in C
  (``engine/csrc/host_loop.c``, GIL released around the maths) or, when the extension is not built, its numpy twin
  :mod:`mindvideo.engine.host_loop_numpy`.
- :mod:`mindvideo.engine.device_update`: the same update on torch tensors, as one Triton kernel on CUDA with a torch
  fallback (Triton is imported lazily).
"""

from __future__ import annotations

if __name__ == "mindvideo.engine":
    from .host_loop import fused_update, get_host_loop, implementation, run_loop
    from .schedule import SamplingPlan, StepCoefficients, make_plan

    __all__ = [
        "SamplingPlan",
        "StepCoefficients",
        "fused_update",
        "get_host_loop",
        "implementation",
        "make_plan",
        "run_loop",
    ]
else:  # the folder imported by its bare name from the repo root: hand over to the installed 'engine' (if any)
    from mindvideo._bare_names import hand_over

    hand_over(__name__, __file__)
