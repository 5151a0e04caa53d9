"""The CPU backends keep freed tensor memory in the process (no page faults per UNet pass)."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from mindvideo.engine.backends import retain_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")


def _faults_per_cycle(block: int = 1 << 20, blocks: int = 16, repeats: int = 10) -> float:
    """Minor page faults per cycle of allocating ``blocks`` tensors of ``block`` bytes together (written to, as a
    UNet pass's activations are), then freeing them all."""

    def cycle():
        live = [torch.empty(block // 4).fill_(1.0) for _ in range(blocks)]
        del live

    for _ in range(repeats):  # warm: the first cycles grow the heap
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def test_freed_tensors_are_reused_without_page_faults():
    assert retain_freed_memory() is True  # glibc on Linux: the thresholds were set
    assert retain_freed_memory() is True  # once per process, the same answer again
    # 16 MiB = 4096 pages per cycle in 1 MiB blocks (below a 2 MiB huge page): with glibc's defaults each cycle
    # gives the freed heap top back to the kernel and faults it in again (~4,000 faults); kept, it is reused
    assert _faults_per_cycle() < 64
