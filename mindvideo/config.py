"""Component configs: one dataclass per network, a JSON round trip and a ``tiny()`` preset.

Each config is a frozen-by-convention dataclass whose fields are JSON values. ``from_dict`` ignores keys it does
not know (reference configs carry diffusers bookkeeping such as ``_class_name``) and reports nothing; ``load``
raises :class:`~mindvideo.errors.MindVideoError` for a missing or unreadable file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from mindvideo.errors import MindVideoError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class: JSON round trip for a flat dataclass of JSON values."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **overrides: Any) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: _untuple(v) for k, v in {**data, **overrides}.items() if k in names}
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls: type[C], path: str | Path, **overrides: Any) -> C:
        return cls.from_dict(read_json(path), **overrides)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _untuple(value: Any) -> Any:
    """JSON gives lists where configs hold tuples; keep configs hashable and comparable."""
    return tuple(value) if isinstance(value, list) else value


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MindVideoError(f"expected a config file at {path}", "no such file", "check the checkpoint folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MindVideoError(f"expected JSON in {path}", f"unreadable content ({exc})", "re-export the file") from None
    if not isinstance(data, dict):
        raise MindVideoError(f"expected a JSON object in {path}", type(data).__name__, "re-export the file")
    return data
