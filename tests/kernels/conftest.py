"""Set-up for the kernel tests: Triton's CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a kernel is *decorated*, so it is set here, before any test module imports
:mod:`mindvideo.kernels.sparse_causal`. With a GPU nothing is set and the same tests run the compiled kernels on
CUDA tensors (see ``kernel_cases.DEVICE``).
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test id: fresh draws for every case, reproducible run to run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
