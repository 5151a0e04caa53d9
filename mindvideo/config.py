"""Component configs: one dataclass per network, a JSON round trip and a ``tiny()`` preset.

Each config is a frozen-by-convention dataclass whose fields are JSON values. ``from_dict`` refuses keys it does not
know with a :class:`~mindvideo.errors.MindVideoError` naming them (a misspelt or foreign setting would otherwise be
dropped and the default used). Keys starting with ``_`` (diffusers bookkeeping such as ``_class_name``,
``_diffusers_version``) and a config's own ``IGNORED_KEYS`` are skipped. ``load`` raises the same error type for a
missing or unreadable file and names the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mindvideo.errors import MindVideoError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class: JSON round trip for a flat dataclass of JSON values."""

    # keys a stored config may carry that this config reads no value from (besides ``_``-prefixed bookkeeping)
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()
    # keys a stored config must give (``load`` refuses a file without them): a default there would build a network
    # of another shape and fail later on an unrelated weight
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **overrides: Any) -> C:
        """The config of ``data`` (``overrides`` win); an unknown key raises :class:`MindVideoError`."""
        return cls._strict_build({**data, **overrides}, "")

    @classmethod
    def _strict_build(cls: type[C], data: dict[str, Any], where: str) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names and not k.startswith("_") and k not in cls.IGNORED_KEYS)
        if unknown:
            raise MindVideoError(
                f"expected only {cls.__name__} keys{where}",
                f"unknown {', '.join(map(repr, unknown))}",
                "remove or correct them (a newer mindvideo may have written them)",
            )
        return cls(**{k: _untuple(v) for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls: type[C], path: str | Path, **overrides: Any) -> C:
        data = {**read_json(path), **overrides}
        missing = [key for key in cls.REQUIRED_KEYS if key not in data]
        if missing:
            raise MindVideoError(
                f"expected the {cls.__name__} keys {', '.join(cls.REQUIRED_KEYS)} in {path}",
                f"{', '.join(missing)} missing",
                "restore the config.json that came with these weights",
            )
        return cls._strict_build(data, f" in {path}")

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
