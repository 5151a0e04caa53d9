"""``manifest.json``: what an export folder holds, how it was made, and the hashes that prove it is intact
(:func:`read_manifest` describes it). Every check on load raises :class:`~mindvideo.errors.MindVideoError` with a
message that says to re-export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import current_umask

from .spec import ExportSpec

log = logging.getLogger(__name__)

FORMAT, VERSION = "mindvideo-export", 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------------------ hashing


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed, so multi-GB weights are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of canonical JSON (sorted keys, no whitespace): equal values hash equal."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One artefact, relative to the export folder."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, root: Path, path: Path) -> FileRecord:
        return cls(path.relative_to(root).as_posix(), sha256_file(path), path.stat().st_size)


def check_file(root: str | Path, record: Mapping[str, Any] | FileRecord, *, hash_check: bool = True) -> Path:
    """The file of ``record`` under ``root`` if it is present, complete and (``hash_check``) unchanged.

    The size check is instant and catches truncation; the sha256 catches any other corruption.
    """
    rec = record if isinstance(record, FileRecord) else FileRecord(**record)
    path = Path(root) / rec.path
    fix = "re-run `mindvideo export` for this folder (it rebuilds only what is missing)"
    if not path.is_file():
        raise MindVideoError(f"expected {path} (listed in the manifest)", "no such file", fix)
    size = path.stat().st_size
    if size != rec.bytes:
        state = "truncated" if size < rec.bytes else "larger than written"
        raise MindVideoError(f"expected {path} to have {rec.bytes} bytes", f"{size} ({state})", fix)
    if hash_check and sha256_file(path) != rec.sha256:
        raise MindVideoError(f"expected {path} to have sha256 {rec.sha256[:16]}…", "different content (corrupt)", fix)
    return path


# ------------------------------------------------------------------------------------------------ reading / writing


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes a graph."""
    import onnx
    import torch

    import mindvideo

    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    versions["mindvideo"] = mindvideo.__version__
    for name in ("onnxruntime", "polygraphy", "onnx_graphsurgeon"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "absent"
    return versions


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync, then rename over ``path``: readers see the old file or the
    whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make the file private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """:func:`write_bytes_atomic` of indented JSON."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The parsed manifest of an export folder (format and version checked; files not checked).

    An export folder::

        OUT/manifest.json             this file (written last: it is the commit point)
        OUT/scheduler_config.json     the checkpoint's diffusers scheduler config, for the runtime
        OUT/onnx/<network>.onnx       one graph per network (+ <network>.onnx.data for graphs over 2 GB)
        OUT/engines/                  the TensorRT engine cache (see :mod:`mindvideo.export.cache`)

    The manifest (``format`` ``"mindvideo-export"``, ``version`` 1)::

        {"format", "version", "created", "tools": {torch, onnx, onnxruntime, polygraphy, python, mindvideo},
         "checkpoint": {"path", "sha256"},
         "settings": {"opset", "exporter", "precision", "vae_precision", "height", "width"},
         "networks": {NAME: {
             "spec": ExportSpec.to_dict(),
             "config_sha256", "weights_sha256",       # the component's config.json (canonical JSON) / weight file
             "cache_key",                             # sha256 of everything the graph depends on
             "files": [{"path", "sha256", "bytes"}],  # the .onnx first, then external data
             "opset", "precision", "exporter", "cleanup", "rewrites", "nodes", "export_seconds",
             "verification": {"tolerance", "metric", "reference",
                              "checks": [{"dims", "outputs": {OUTPUT: {"max_abs", "max_rel"}}}]}}},
         "engines": {NAME: {"plan", "precision", "target"}}}   # filled by --format trt
    """
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise MindVideoError(
            f"expected an export folder with {MANIFEST} at {export_dir}",
            "no manifest",
            "run `mindvideo export --checkpoint CKPT --out DIR` first",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MindVideoError(f"expected JSON in {path}", f"unreadable ({exc})", "re-run `mindvideo export`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        found = f"format {data.get('format')!r} version {data.get('version')!r}" if isinstance(data, dict) else "?"
        raise MindVideoError(f"expected a {FORMAT} v{VERSION} manifest in {path}", found, "re-run `mindvideo export`")
    return data


@dataclasses.dataclass
class ExportedModel:
    """A checked export folder: what the runtime loads.

    ``specs`` rebuild every buffer shape; ``onnx_path(name)`` is the graph to hand to onnxruntime or TensorRT's
    parser; ``scheduler_config`` is the checkpoint's diffusers scheduler config.
    """

    root: Path
    manifest: dict[str, Any]

    @property
    def specs(self) -> dict[str, ExportSpec]:
        return {name: ExportSpec.from_dict(net["spec"]) for name, net in self.manifest["networks"].items()}

    def onnx_path(self, network: str) -> Path:
        try:
            return self.root / self.manifest["networks"][network]["files"][0]["path"]
        except KeyError:
            raise MindVideoError(
                f"expected network {network!r} in {self.root / MANIFEST}",
                f"{sorted(self.manifest['networks'])}",
                "re-run `mindvideo export`",
            ) from None

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The export's copy of the checkpoint's scheduler config; missing schedule keys are refused by name."""
        from mindvideo.checkpoint import load_scheduler_config

        return load_scheduler_config(self.root)


def load_export(export_dir: str | Path, *, hash_check: bool = True) -> ExportedModel:
    """Open an export folder for the runtime: manifest read, every listed file present, complete and (by default)
    matching its sha256. Raises :class:`MindVideoError` naming the bad file."""
    root = Path(export_dir)
    manifest = read_manifest(root)
    for name, net in manifest.get("networks", {}).items():
        for record in net.get("files", []):
            check_file(root, record, hash_check=hash_check)
        log.debug("%s: files verified", name)
    return ExportedModel(root, manifest)


def check_onnx_file(path: str | Path) -> None:
    """Parse an ``.onnx`` file (and its external data) or raise :class:`MindVideoError`: for graphs that come without
    a manifest. Loads the whole model; prefer :func:`load_export`'s hash check when there is a manifest."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # DecodeError, ValidationError, OSError: all mean an unusable file
        raise MindVideoError(
            f"expected a valid ONNX graph at {path}",
            f"{type(exc).__name__}: {str(exc)[:200]}",
            "re-export it with `mindvideo export`",
        ) from None
