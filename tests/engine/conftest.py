"""Every sampler test runs against both implementations: the C extension and its numpy twin."""

from __future__ import annotations

from types import ModuleType

import pytest

from mindvideo.engine import sampler as engine_sampler


@pytest.fixture(params=["c", "python"])
def sampler(request) -> ModuleType:
    """``mindvideo.engine._sampler`` or ``mindvideo.engine.loop`` (same API)."""
    if request.param not in engine_sampler.IMPLEMENTATIONS:
        pytest.skip("the C extension mindvideo.engine._sampler is not built (pip install -e . with a C compiler)")
    return engine_sampler.IMPLEMENTATIONS[request.param]
