"""A small registry of attention backends.

The video UNet never calls an attention implementation directly: it calls :func:`sparse_causal_attention` or
:func:`temporal_attention` (see ``mindvideo.kernels``), which ask this registry for the best backend that accepts
the inputs. Each backend declares a priority and a ``supports(*args) -> bool`` predicate over devices, dtypes and
shapes; the torch reference accepts everything and is the test oracle.

Selection order: an explicit ``backend=`` argument, else the innermost :func:`use_backend` context, else the
``MINDVIDEO_ATTENTION_BACKEND`` environment variable, else the highest-priority backend whose ``supports`` is true.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mindvideo.errors import MindVideoError

OPS = ("sparse_causal_attention", "temporal_attention")
ENV_VAR = "MINDVIDEO_ATTENTION_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One implementation of one op."""

    op: str
    name: str
    fn: Callable[..., Any]
    priority: int
    supports: Callable[..., bool]


_BACKENDS: dict[str, dict[str, Backend]] = {op: {} for op in OPS}
_forced: list[tuple[str | None, str]] = []  # (op or None for all ops, backend name)


def register(
    op: str, name: str, *, priority: int = 0, supports: Callable[..., bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as backend ``name`` for ``op``."""
    if op not in _BACKENDS:
        raise ValueError(f"unknown attention op {op!r}; expected one of {OPS}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _BACKENDS[op][name] = Backend(op, name, fn, priority, supports or (lambda *a, **k: True))
        return fn

    return wrap


def backends(op: str) -> list[str]:
    """Names of the backends registered for ``op``, best first."""
    return [b.name for b in sorted(_BACKENDS[op].values(), key=lambda b: -b.priority)]


@contextlib.contextmanager
def use_backend(name: str | None, *, op: str | None = None) -> Iterator[None]:
    """Force one backend inside the block: for every op that has it, or only for ``op``. ``None`` restores automatic
    choice. Blocks nest; the innermost one that covers an op decides for it."""
    if op is not None and op not in _BACKENDS:
        raise ValueError(f"unknown attention op {op!r}; expected one of {OPS}")
    tables = [_BACKENDS[op]] if op is not None else list(_BACKENDS.values())
    if name is not None and not any(name in table for table in tables):
        raise MindVideoError(
            f"expected an attention backend among {sorted({n for t in tables for n in t})}",
            repr(name),
            "pick one of those names",
        )
    _forced.append((op, name or ""))
    try:
        yield
    finally:
        _forced.pop()


def _forced_for(op: str) -> str:
    """The backend the innermost :func:`use_backend` block covering ``op`` forces ("" = automatic)."""
    return next((name for scope, name in reversed(_forced) if scope in (None, op)), "")


def select(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> Backend:
    """The backend that will run ``op`` on these arguments."""
    table = _BACKENDS[op]
    forced = _forced_for(op)
    name = backend or forced or os.environ.get(ENV_VAR, "")
    if name:
        if name not in table:
            if backend:
                fix = "pass one of those as backend="
            elif forced:
                fix = f"force {name!r} only for the ops that have it: use_backend({name!r}, op=...)"
            else:
                fix = f"unset {ENV_VAR} or set it to one of those"
            raise MindVideoError(f"expected an attention backend for {op} among {backends(op)}", repr(name), fix)
        chosen = table[name]
        if not chosen.supports(*args, **kwargs):
            raise MindVideoError(
                f"attention backend {name!r} does not accept these inputs for {op}",
                _describe(args),
                "choose another backend or change dtype/device",
            )
        return chosen
    for candidate in sorted(table.values(), key=lambda b: -b.priority):
        if candidate.supports(*args, **kwargs):
            return candidate
    raise RuntimeError(f"no attention backend accepts {op} on {_describe(args)}")  # the reference accepts all


def dispatch(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    return select(op, *args, backend=backend, **kwargs).fn(*args, **kwargs)


def _describe(args: tuple[Any, ...]) -> str:
    parts = []
    for a in args:
        if hasattr(a, "shape"):
            parts.append(f"{tuple(a.shape)} {a.dtype} on {a.device}")
    return ", ".join(parts) or "no tensors"
