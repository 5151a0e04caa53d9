"""Every sampler test runs against both implementations: the C extension and its numpy twin."""

from __future__ import annotations

from types import ModuleType

import pytest

from mindvideo.engine import host_loop


@pytest.fixture(params=["c", "python"])
def sampler(request) -> ModuleType:
    """``mindvideo.engine._host_loop`` or ``mindvideo.engine.host_loop_numpy`` (same API)."""
    if request.param not in host_loop.IMPLEMENTATIONS:
        pytest.skip("the C extension mindvideo.engine._host_loop is not built (pip install -e . with a C compiler)")
    return host_loop.IMPLEMENTATIONS[request.param]
