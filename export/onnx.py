"""``export_onnx``: a checkpoint folder → verified ONNX graphs + ``manifest.json``, reusing what is unchanged.

For each network (``fmri_encoder``, ``unet``, ``vae_decoder``, and ``tiny_decoder`` when the checkpoint has a
``tiny_decoder/``) a cache key hashes everything its graph depends on: the component's ``config.json`` (canonical
JSON) and weight file, the :class:`ExportSpec` (precision, shapes, profile), the opset, the exporter and the tool
versions. A network whose key equals the one in an existing manifest, and whose files still hash to the recorded
sha256, is reused without loading the model; the others are traced, cleaned, checked and verified against PyTorch in
a staging folder beside ``out`` and moved in only when every network succeeded, the manifest last. A failed export
leaves ``out`` as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mindvideo.checkpoint import find_weights, load_scheduler_config
from mindvideo.config import read_json
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import check_not_cwd, folder_lock, folder_mode
from mindvideo.models.fmri_encoder import FMRIEncoderConfig
from mindvideo.weights import verify_checksum

from . import graph, verify
from .manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    FileRecord,
    check_file,
    read_manifest,
    sha256_file,
    sha256_json,
    tool_versions,
    write_json_atomic,
)
from .modules import cast_module, load_network
from .spec import NETWORKS, OPTIONAL_NETWORKS, ExportSpec, NetworkShapes, SpecOptions, build_specs

log = logging.getLogger(__name__)

EXPORT_LOGIC_VERSION = 1  # bump when a change here changes the graphs: old caches then miss
COMPONENT = {"fmri_encoder": "fmri_encoder", "unet": "unet", "vae_decoder": "vae", "tiny_decoder": "tiny_decoder"}
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Everything the CLI's options decide. ``rtol`` overrides the per-precision verification tolerance."""

    spec: SpecOptions = dataclasses.field(default_factory=SpecOptions)
    opset: int = 17
    exporter: str = "torchscript"
    rtol: float | None = None
    verify: bool = True

    def tolerance(self, precision: str) -> float:
        return self.rtol if self.rtol is not None else verify.TOLERANCE[precision]


@dataclasses.dataclass(frozen=True)
class NetworkResult:
    """One row of the CLI's table."""

    name: str
    status: str  # "exported" | "reused"
    precision: str
    bytes: int
    seconds: float
    max_abs: float | None
    max_rel: float | None
    tolerance: float | None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    networks: list[NetworkResult]
    written: bool  # False when everything was reused and the folder was left untouched

    @property
    def reused_all(self) -> bool:
        return all(n.status == "reused" for n in self.networks)


# ------------------------------------------------------------------------------------------------ the checkpoint


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What the export needs to know about a checkpoint before loading any weights."""

    path: Path
    shapes: NetworkShapes
    config_sha256: dict[str, str]  # per network
    weights_sha256: dict[str, str]  # per network
    scheduler_config: dict[str, Any]
    networks: tuple[str, ...] = NETWORKS  # + the optional networks the checkpoint has (a tiny decoder)

    @property
    def sha256(self) -> str:
        return sha256_json({"config": self.config_sha256, "weights": self.weights_sha256})


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Check a checkpoint folder (ours or the reference layout) and hash its configs and weights.

    Raises :class:`MindVideoError` for a missing folder, component, config or weight file.
    """
    root = Path(path)
    if not root.is_dir():
        raise MindVideoError(f"expected a checkpoint folder at {root}", "no such folder", "check --checkpoint")
    missing = [c for c in ("fmri_encoder", "unet", "vae", "scheduler") if not (root / c).is_dir()]
    if missing:
        raise MindVideoError(
            f"expected component folders fmri_encoder/, unet/, vae/, scheduler/ in {root}",
            f"{missing} missing",
            "point --checkpoint at the checkpoint root",
        )
    networks = NETWORKS + tuple(n for n in OPTIONAL_NETWORKS if (root / COMPONENT[n]).is_dir())
    configs, config_sha, weights_sha = {}, {}, {}
    for network in networks:
        folder = root / COMPONENT[network]
        configs[COMPONENT[network]] = read_json(folder / "config.json")
        config_sha[network] = sha256_json(configs[COMPONENT[network]])
        weights_sha[network] = sha256_file(weights := find_weights(folder))
        verify_checksum(weights, weights_sha[network])  # a damaged weight file is refused before any export
    if "tiny_decoder" in networks:  # its graph divides by the VAE's scaling factor: a changed factor re-exports it
        scaling = configs["vae"].get("scaling_factor")
        config_sha["tiny_decoder"] = sha256_json({"tiny_decoder": configs["tiny_decoder"], "vae_scaling": scaling})
    FMRIEncoderConfig.load(root / "fmri_encoder" / "config.json")  # a missing shape key is named here
    shapes = NetworkShapes.from_configs(configs["fmri_encoder"], configs["unet"], configs["vae"])
    scheduler = load_scheduler_config(root / "scheduler")
    return CheckpointInfo(root, shapes, config_sha, weights_sha, scheduler, networks)


def cache_key(info: CheckpointInfo, spec: ExportSpec, settings: ExportSettings, tools: dict[str, str]) -> str:
    """sha256 of everything network ``spec.name``'s graph depends on."""
    return sha256_json(
        {
            "network": spec.name,
            "config": info.config_sha256[spec.name],
            "weights": info.weights_sha256[spec.name],
            "spec": spec.to_dict(),
            "opset": settings.opset,
            "exporter": settings.exporter,
            "tools": {k: tools[k] for k in ("torch", "onnx", "polygraphy", "onnx_graphsurgeon")},
            "logic": EXPORT_LOGIC_VERSION,
        }
    )


# ------------------------------------------------------------------------------------------------ export


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    settings: ExportSettings = ExportSettings(),
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export the three networks of ``checkpoint`` (and its tiny decoder, if it has one) to ``out`` (see the module
    docstring); returns the manifest and one :class:`NetworkResult` per network. ``force`` re-exports even when the
    cache key matches."""
    graph.check_opset(settings.opset)
    graph.check_exporter(settings.exporter, settings.spec.attention)  # before anything is traced
    out, info = Path(out), inspect_checkpoint(checkpoint)
    check_not_cwd(out)
    with folder_lock(out, "export"):  # one export writes a folder at a time
        return _export_locked(info, out, settings, force, progress or log.info)


def _export_locked(info: CheckpointInfo, out: Path, settings: ExportSettings, force: bool, say) -> ExportResult:
    specs = build_specs(info.shapes, settings.spec, tiny_decoder="tiny_decoder" in info.networks)
    tools = tool_versions()
    previous = _previous_manifest(out, force)
    keys = {name: cache_key(info, spec, settings, tools) for name, spec in specs.items()}
    reuse = {name for name in info.networks if not force and _reusable(out, previous, name, keys[name])}
    staging = _staging_dir(out)
    try:
        entries, results = {}, []
        for name in info.networks:
            if name in reuse:
                say(f"{name}: reused (checkpoint and settings unchanged, cache key {keys[name][:12]})")
                entries[name] = previous["networks"][name]
            else:
                say(f"{name}: exporting ({specs[name].precision}, opset {settings.opset}, {settings.exporter})")
                module = load_network(name, info.path)  # one model in memory at a time (SD-1.5 UNet: ~4.5 GB)
                entries[name] = _export_network(module, specs[name], staging, settings, info, keys[name])
                del module
            results.append(_result(name, entries[name], "reused" if name in reuse else "exported"))
        manifest = _manifest(info, settings, tools, entries, previous, reuse)
        # a network re-exported to identical bytes (e.g. repairing a damaged file) must still be written back
        if not any(r.status == "exported" for r in results) and _unchanged(previous, manifest):
            say(f"nothing to do: {out} already holds this export")
            return ExportResult(out, previous, results, written=False)
        _commit(staging, out, manifest, info.scheduler_config, previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, manifest, results, written=True)


def _export_network(
    module, spec: ExportSpec, staging: Path, settings: ExportSettings, info: CheckpointInfo, key: str
) -> dict[str, Any]:
    """Trace → clean → save → verify one network into ``staging/onnx``; returns its manifest entry."""
    start = time.perf_counter()
    raw_dir = staging / f"raw-{spec.name}"
    raw_dir.mkdir(parents=True)
    (staging / "onnx").mkdir(exist_ok=True)
    graph.trace_to_onnx(
        cast_module(module, spec.precision),
        spec,
        raw_dir / "model.onnx",
        opset=settings.opset,
        exporter=settings.exporter,
    )
    info_graph = graph.finalize(raw_dir / "model.onnx", staging / "onnx" / f"{spec.name}.onnx", spec)
    shutil.rmtree(raw_dir)
    tolerance, checks = settings.tolerance(spec.precision), []
    if settings.verify:
        checks = verify.verify(info_graph.files[0], module, spec, verify.verification_dims(spec), tolerance)
    return {
        "spec": spec.to_dict(),
        "config_sha256": info.config_sha256[spec.name],
        "weights_sha256": info.weights_sha256[spec.name],
        "cache_key": key,
        "files": [dataclasses.asdict(FileRecord.of(staging, f)) for f in info_graph.files],
        "opset": settings.opset,
        "precision": spec.precision,
        "exporter": settings.exporter,
        "cleanup": info_graph.cleanup,
        "rewrites": info_graph.rewrites,
        "nodes": info_graph.nodes,
        "export_seconds": round(time.perf_counter() - start, 2),
        "verification": {
            "tolerance": tolerance,
            "metric": "max_rel = max|ort-torch| / max|torch|",
            "reference": "PyTorch fp32, reference attention",
            "checks": [c.to_dict() for c in checks],
        },
    }


def _result(name: str, entry: dict[str, Any], status: str) -> NetworkResult:
    checks = entry.get("verification", {}).get("checks", [])
    errors = [e for c in checks for e in c["outputs"].values()]
    worst = max(errors, key=lambda e: e["max_rel"]) if errors else None
    return NetworkResult(
        name,
        status,
        entry["precision"],
        sum(f["bytes"] for f in entry["files"]),
        0.0 if status == "reused" else entry["export_seconds"],
        worst and worst["max_abs"],
        worst and worst["max_rel"],
        entry.get("verification", {}).get("tolerance") if worst else None,
    )


# ------------------------------------------------------------------------------------------------ folder handling


# what an export folder holds besides its manifest: a folder of only these is an export whose manifest was lost
EXPORT_ENTRIES = frozenset({"onnx", "engines", "scheduler_config.json"})


def _previous_manifest(out: Path, force: bool = False) -> dict[str, Any] | None:
    """The manifest already in ``out``, ``None`` for a new folder; refuses to write into an unrelated folder. An
    export folder whose manifest is gone is rebuilt in place with ``force`` (``{"networks": {}, "rebuild": True}``)."""
    check_not_cwd(out)  # a new export replaces the (empty) folder itself
    if not out.exists():
        return None
    if not out.is_dir():
        raise MindVideoError("expected --out to be a folder", f"a file at {out}", "choose another path")
    if not (out / MANIFEST).is_file():
        entries = sorted(p.name for p in out.iterdir())
        if entries and set(entries) <= EXPORT_ENTRIES and (out / "onnx").is_dir():
            if not force:
                raise MindVideoError(
                    f"expected {MANIFEST} in the export folder {out}",
                    f"an export without it ({', '.join(entries)})",
                    "pass --force to rebuild it in place, or choose another --out",
                )
            log.warning("%s has no %s: rebuilding the export in place", out, MANIFEST)
            return {"networks": {}, "rebuild": True}
        if entries:
            more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
            raise MindVideoError(
                "expected --out to be empty or a previous export folder",
                f"other files in {out} ({entries[0]!r}{more})",
                "choose an empty or new folder",
            )
        return None
    try:
        return read_manifest(out)
    except MindVideoError as exc:
        log.warning("ignoring the unreadable manifest in %s (%s): exporting everything again", out, exc)
        return {"networks": {}}


def _reusable(out: Path, previous: dict[str, Any] | None, name: str, key: str) -> bool:
    entry = (previous or {}).get("networks", {}).get(name)
    if not entry or entry.get("cache_key") != key:
        return False
    try:
        for record in entry["files"]:
            check_file(out, record)
    except MindVideoError as exc:
        log.warning("%s: cached graph unusable (%s): exporting it again", name, exc)
        return False
    return True


def _staging_dir(out: Path) -> Path:
    """A fresh staging folder beside ``out`` (same filesystem, so moves are renames); removes those left by killed
    exports (the owner's pid is in the name)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        pid = stale.name.rsplit(".staging-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a killed export", stale)
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
    os.chmod(staging, folder_mode())  # it becomes `out` itself for a new folder
    return staging


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _manifest(info, settings, tools, entries, previous, reuse) -> dict[str, Any]:
    engines = {k: v for k, v in (previous or {}).get("engines", {}).items() if k in reuse}
    opts = settings.spec
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tools": tools,
        "checkpoint": {"path": str(info.path.resolve()), "sha256": info.sha256},
        "settings": {
            "opset": settings.opset,
            "exporter": settings.exporter,
            "precision": opts.precision,
            "vae_precision": opts.vae_precision,
            "height": opts.height,
            "width": opts.width,
            **({"attention": opts.attention} if opts.attention != "onnx" else {}),
        },
        "networks": entries,
        "engines": engines,
    }


def _unchanged(previous: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    """Everything reused and recorded the same way: leave the folder (and its timestamps) alone."""
    if previous is None:
        return False
    same = ("checkpoint", "settings", "networks")
    return all(previous.get(k) == manifest[k] for k in same)


def _commit(staging: Path, out: Path, manifest: dict[str, Any], scheduler: dict[str, Any], previous) -> None:
    """Move the staged graphs into ``out`` and write the manifest last (atomic per file; a fresh ``out`` appears
    whole with one rename)."""
    (staging / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n", encoding="utf-8")
    if previous is None:
        write_json_atomic(staging / MANIFEST, manifest)
        if out.exists():
            out.rmdir()  # empty (checked in _previous_manifest)
        os.replace(staging, out)
        return
    new_files = {f["path"] for e in manifest["networks"].values() for f in e["files"]}
    for path in sorted((staging / "onnx").glob("*")):
        (out / "onnx").mkdir(exist_ok=True)
        os.replace(path, out / "onnx" / path.name)
    os.replace(staging / "scheduler_config.json", out / "scheduler_config.json")
    write_json_atomic(out / MANIFEST, manifest)
    stale = {f["path"] for e in previous.get("networks", {}).values() for f in e.get("files", [])} - new_files
    if previous.get("rebuild"):  # no manifest said what the old graphs were: keep only this export's
        stale = {f"onnx/{p.name}" for p in (out / "onnx").iterdir() if p.is_file()} - new_files
    for rel in stale:
        if Path(rel).parts[:1] == ("onnx",) and ".." not in Path(rel).parts:  # only graphs this export wrote
            (out / rel).unlink(missing_ok=True)
