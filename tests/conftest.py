"""Shared test set-up: deterministic torch, one thread per worker, Triton's interpreter without a GPU, and a GPU
marker that skips with a reason on CPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET when it decorates a kernel, its own standard library included, and any test
    # module's import (transformers, torch) may import triton during collection: set it before anything else.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    torch.manual_seed(0)
    torch.set_num_threads(1)  # pytest -n 2 on 2 cores: one thread per worker avoids oversubscription


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
