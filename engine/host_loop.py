"""Which host sampling loop runs: the C extension ``mindvideo.engine._host_loop`` when built, else its numpy twin.

Both implementations have the same API (:func:`run_loop`, :func:`fused_update`); this module binds the fast one
and says so once in the log when it has to fall back.
"""

from __future__ import annotations

import logging
from types import ModuleType

from mindvideo.errors import MindVideoError

from . import host_loop_numpy as _python

log = logging.getLogger(__name__)

try:
    from . import _host_loop as _c
except ImportError as exc:  # not built (no compiler at install time) or built for another Python
    _c = None
    log.warning(
        "the C sampling loop (mindvideo.engine._host_loop) is not available (%s); using the numpy twin. "
        "Reinstall with a C compiler (pip install -e .) to build it.",
        exc,
    )

IMPLEMENTATIONS: dict[str, ModuleType] = {"python": _python, **({"c": _c} if _c is not None else {})}
implementation = "c" if _c is not None else "python"
"""The implementation :func:`run_loop` and :func:`fused_update` are bound to."""

run_loop = IMPLEMENTATIONS[implementation].run_loop
fused_update = IMPLEMENTATIONS[implementation].fused_update


def get_host_loop(name: str | None = None) -> ModuleType:
    """The module implementing ``run_loop``/``fused_update``: ``"c"``, ``"python"``, or ``None`` for the default."""
    name = implementation if name is None else name
    if name not in ("c", "python"):
        raise MindVideoError("expected a sampler implementation 'c' or 'python'", repr(name), "pick one")
    if name not in IMPLEMENTATIONS:
        raise MindVideoError(
            "expected the C sampling loop to be built",
            "mindvideo.engine._host_loop is missing",
            "reinstall with a C compiler (pip install -e .), or use 'python'",
        )
    return IMPLEMENTATIONS[name]
