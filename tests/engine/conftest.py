"""Every sampler test runs against both implementations: the C extension and its numpy twin."""

from __future__ import annotations

from types import ModuleType

import pytest
from engine_testing import c_host_loop

from mindvideo.engine import host_loop


@pytest.fixture(params=["c", "python"])
def sampler(request) -> ModuleType:
    """``mindvideo.engine._host_loop`` or ``mindvideo.engine.host_loop_numpy`` (same API); a missing C build fails
    under CI and is skipped with a warning elsewhere (:func:`engine_testing.c_host_loop`)."""
    return c_host_loop() if request.param == "c" else host_loop.IMPLEMENTATIONS["python"]
