"""The TensorRT engine cache: keys, the engine record (our header), atomic writes and load-time refusal.

A serialized TensorRT engine only runs on the TensorRT version and the GPU (compute capability) it was built for,
and it is only right for the ONNX graph and builder flags it was built from. Each cached engine is two files::

    ROOT/<network>-<key[:20]>.plan   the TensorRT plan, untouched (trtexec --loadEngine reads it)
    ROOT/<network>-<key[:20]>.json   its :class:`EngineRecord`: what it was built from and for, its sha256

and ``key`` = sha256 of (ONNX sha256, builder flags, optimisation profile, TensorRT version, GPU name, compute
capability), see :func:`engine_key`. The plan is written first and the record last, both atomically, so a record
always describes a complete plan. :func:`load_engine` refuses a plan whose record names another TensorRT, GPU or
ONNX graph, or whose bytes do not hash to the record's sha256, with a message saying to rebuild.

Timing caches (``ROOT/timing-<target>.cache``) persist TensorRT's kernel timings between builds for one target.

Nothing here imports TensorRT: the current target comes from :func:`mindvideo.export.tensorrt.current_target`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mindvideo.errors import MindVideoError

from .manifest import sha256_file, sha256_json, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

RECORD_FORMAT, RECORD_VERSION = "mindvideo-engine", 1
# precision → TensorRT BuilderFlag names. TF32 is cleared first, so "fp32" is true fp32; fp8 needs Q/DQ nodes in the
# graph (e.g. from TensorRT Model Optimizer) to take effect, otherwise those layers run in fp16.
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "tf32": ("TF32",),
    "fp16": ("TF32", "FP16"),
    "bf16": ("TF32", "BF16"),
    "fp8": ("TF32", "FP16", "FP8"),
}
MIN_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}  # Ampere for bf16, Ada/Hopper for fp8
REBUILD = "rebuild it on this machine: mindvideo export --checkpoint CKPT --out DIR --format trt"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an engine runs: TensorRT version, GPU name and compute capability (``"9.0"``)."""

    trt_version: str
    gpu_name: str
    compute_capability: str

    @property
    def capability(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)

    def slug(self) -> str:
        """A file-name-safe label, e.g. ``trt10.3.0-sm90-nvidia-h100-80gb-hbm3``."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")
        return f"trt{self.trt_version}-sm{''.join(map(str, self.capability))}-{gpu}"

    def describe(self) -> str:
        return f"TensorRT {self.trt_version} on {self.gpu_name} (sm {self.compute_capability})"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Builder settings that change the engine. ``optimization_level`` is TensorRT's 0–5 (3 = its default; 5 tries
    the most tactics and builds slowest); ``workspace_gib`` caps the builder's scratch memory (``None``: TensorRT's
    default, the whole GPU)."""

    precision: str = "fp16"
    optimization_level: int = 3
    workspace_gib: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in BUILDER_FLAGS:
            raise MindVideoError(f"expected a TensorRT precision among {list(BUILDER_FLAGS)}", repr(self.precision))
        if not 0 <= self.optimization_level <= 5:
            raise MindVideoError("expected a builder optimisation level 0–5", str(self.optimization_level))

    @property
    def flags(self) -> tuple[str, ...]:
        return BUILDER_FLAGS[self.precision]

    def check(self, target: Target) -> None:
        """Refuse precisions the GPU cannot run."""
        need = MIN_CAPABILITY.get(self.precision)
        if need and target.capability < need:
            raise MindVideoError(
                f"expected a GPU of compute capability ≥ {need[0]}.{need[1]} for {self.precision} engines",
                f"{target.gpu_name} (sm {target.compute_capability})",
                "choose --precision fp16 (or fp32)",
            )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flags": list(self.flags)}


def engine_key(
    onnx_sha256: str,
    build: BuildConfig,
    profile: Mapping[str, Any],
    target: Target,
    *,
    plugins: Mapping[str, str] | None = None,
) -> str:
    """sha256 over everything a built engine depends on; ``plugins`` maps each plugin the graph uses to a
    fingerprint of its kernel (an engine embeds the plugin's compiled code)."""
    return sha256_json(
        {
            "onnx": onnx_sha256,
            "build": build.to_dict(),
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "target": dataclasses.asdict(target),
            "record_version": RECORD_VERSION,
            **({"plugins": dict(plugins)} if plugins else {}),
        }
    )


@dataclasses.dataclass(frozen=True)
class EngineRecord:
    """The metadata written beside every plan (``.json``): our engine header."""

    network: str
    key: str
    onnx_sha256: str
    build: dict[str, Any]
    profile: dict[str, Any]
    target: Target
    engine_sha256: str
    engine_bytes: int
    created: str = ""
    format: str = RECORD_FORMAT
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target": dataclasses.asdict(self.target)}

    @classmethod
    def read(cls, path: Path) -> EngineRecord:
        """Parse a record file; :class:`MindVideoError` if it is missing, unreadable or of another format."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != RECORD_FORMAT or data.get("version") != RECORD_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            return cls(**{**data, "target": Target(**data["target"])})
        except FileNotFoundError:
            raise MindVideoError(
                f"expected the engine record {path} beside the plan", "no such file", REBUILD
            ) from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MindVideoError(
                f"expected a {RECORD_FORMAT} v{RECORD_VERSION} record at {path}", str(exc)[:200], REBUILD
            ) from None


def check_record(record: EngineRecord, target: Target, onnx_sha256: str | None = None) -> None:
    """Refuse an engine built for another TensorRT, GPU or ONNX graph."""
    built = record.target
    if built.trt_version != target.trt_version:
        raise MindVideoError(
            f"expected an engine built with TensorRT {target.trt_version} for {record.network}",
            f"one built with TensorRT {built.trt_version}",
            REBUILD,
        )
    if (built.compute_capability, built.gpu_name) != (target.compute_capability, target.gpu_name):
        raise MindVideoError(
            f"expected an engine built for {target.gpu_name} (sm {target.compute_capability}) for {record.network}",
            f"one built for {built.gpu_name} (sm {built.compute_capability})",
            REBUILD,
        )
    if onnx_sha256 is not None and record.onnx_sha256 != onnx_sha256:
        raise MindVideoError(
            f"expected the {record.network} engine to come from the exported graph {onnx_sha256[:12]}…",
            f"one built from {record.onnx_sha256[:12]}… (another model or export)",
            REBUILD,
        )


def load_engine(plan: str | Path, target: Target, onnx_sha256: str | None = None) -> bytes:
    """The bytes of a cached plan after every check: record present and of our format, built for ``target`` (and
    from ``onnx_sha256`` when given), plan complete and unchanged.

    Hand them to ``trt.Runtime(logger).deserialize_cuda_engine``.
    """
    plan = Path(plan)
    record = EngineRecord.read(plan.with_suffix(".json"))
    check_record(record, target, onnx_sha256)
    if not plan.is_file():
        raise MindVideoError(f"expected the engine plan {plan}", "no such file", REBUILD)
    data = plan.read_bytes()
    if len(data) != record.engine_bytes:
        raise MindVideoError(
            f"expected {plan} to have {record.engine_bytes} bytes", f"{len(data)} (truncated?)", REBUILD
        )
    if sha256_file(plan) != record.engine_sha256:
        raise MindVideoError(f"expected {plan} to match its record's sha256", "different content (corrupt)", REBUILD)
    return data


class EngineCache:
    """A folder of plans + records (see the module docstring). Safe to share between machines: keys include the
    target, and every write is atomic."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def plan_path(self, network: str, key: str) -> Path:
        return self.root / f"{network}-{key[:20]}.plan"

    def lookup(self, network: str, key: str) -> Path | None:
        """The plan for ``key`` if its record and bytes check out; ``None`` on a miss or a damaged entry."""
        plan = self.plan_path(network, key)
        if not plan.with_suffix(".json").is_file():
            return None
        try:
            record = EngineRecord.read(plan.with_suffix(".json"))
            load_engine(plan, record.target, record.onnx_sha256)
        except MindVideoError as exc:
            log.warning("%s: cached engine unusable (%s): rebuilding", network, exc)
            return None
        return plan if record.key == key else None

    def store(
        self,
        network: str,
        key: str,
        plan_bytes: bytes,
        *,
        onnx_sha256: str,
        build: BuildConfig,
        profile: Mapping[str, Any],
        target: Target,
    ) -> Path:
        """Write a plan, then its record; returns the plan path."""
        plan = self.plan_path(network, key)
        write_bytes_atomic(plan, plan_bytes)
        record = EngineRecord(
            network=network,
            key=key,
            onnx_sha256=onnx_sha256,
            build=build.to_dict(),
            profile={k: [list(s) for s in v] for k, v in profile.items()},
            target=target,
            engine_sha256=sha256_file(plan),
            engine_bytes=len(plan_bytes),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_json_atomic(plan.with_suffix(".json"), record.to_dict())
        return plan

    def records(self, network: str | None = None) -> list[EngineRecord]:
        """Every readable record (damaged ones skipped), optionally for one network."""
        found = []
        for path in sorted(self.root.glob("*.json")):
            try:
                record = EngineRecord.read(path)
            except MindVideoError:
                continue
            if network is None or record.network == network:
                found.append(record)
        return found

    def find(self, network: str, target: Target, onnx_sha256: str) -> Path:
        """The plan of ``network`` built from ``onnx_sha256`` for ``target``, checked; otherwise a
        :class:`MindVideoError` that names what the cache does hold."""
        candidates = [r for r in self.records(network) if r.onnx_sha256 == onnx_sha256]
        for record in candidates:
            if record.target == target:
                plan = self.plan_path(network, record.key)
                load_engine(plan, target, onnx_sha256)
                return plan
        found = ", ".join(sorted({r.target.describe() for r in candidates})) or "no engine"
        raise MindVideoError(f"expected a {network} engine for {target.describe()} in {self.root}", found, REBUILD)

    # ------------------------------------------------------------------------------------------- timing caches

    def timing_cache_path(self, target: Target) -> Path:
        return self.root / f"timing-{target.slug()}.cache"

    def read_timing_cache(self, target: Target) -> bytes:
        path = self.timing_cache_path(target)
        return path.read_bytes() if path.is_file() else b""

    def write_timing_cache(self, target: Target, data: bytes) -> None:
        if data:
            write_bytes_atomic(self.timing_cache_path(target), data)
