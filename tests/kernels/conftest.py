"""Set-up for the kernel tests: Triton's CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a kernel is *decorated*, so it is set here, before any test module imports
:mod:`mindvideo.kernels.sparse_causal`. With a GPU nothing is set and the same tests run the compiled kernels on
CUDA tensors (see ``kernel_cases.DEVICE``).
"""

from __future__ import annotations

import contextlib
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Decorate the kernels now, under the interpreter: a test that sets TRITON_INTERPRET=0 for a moment must not be
    # the first to import them (with pytest-xdist, any test can run first in a worker).
    with contextlib.suppress(ImportError):
        import mindvideo.kernels.sparse_causal
        import mindvideo.kernels.temporal  # noqa: F401


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test id: fresh draws for every case, reproducible run to run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
