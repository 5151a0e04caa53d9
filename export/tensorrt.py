"""TensorRT engines from the exported ONNX graphs (``mindvideo export --format trt``, extra ``gpu``).

Written against the TensorRT 10 Python API as TensorRT's demo/Diffusion uses it (one optimisation profile from the
:class:`ExportSpec`, a persisted timing cache). TensorRT is imported only inside these functions. Not yet run on a
GPU: the cache, keys, records and refusals around the build are tested with fake plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import folder_lock

from . import plugin, trt_plugin
from .cache import BuildConfig, EngineCache, Target, engine_key, load_engine
from .manifest import MANIFEST, ExportedModel, load_export, write_json_atomic
from .spec import ExportSpec
from .trt_import import require_tensorrt

log = logging.getLogger(__name__)


def current_target() -> Target:
    """TensorRT version and the current CUDA device: what engines built here are for."""
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise MindVideoError(
            "expected a CUDA GPU to build or load TensorRT engines",
            "none visible",
            "run on the GPU machine the engines are for",
        )
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return Target(trt.__version__, props.name, f"{props.major}.{props.minor}")


def build_engine(
    onnx_path: Path, spec: ExportSpec, build: BuildConfig, timing_cache: bytes = b""
) -> tuple[bytes, bytes]:
    """Parse ``onnx_path`` and build one engine with ``spec``'s profile; returns (plan, updated timing cache)."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # GroupNorm exports as InstanceNormalization
    if spec.attention == "plugin":
        # the plugin nodes must bind to our AOT plugin: register it, and hide the nodes' ONNX function from the
        # parser (which would otherwise inline it); `path` lets the parser find external weights
        trt_plugin.register()
        parsed = parser.parse(plugin.for_tensorrt(onnx_path), str(onnx_path))
    else:
        parsed = parser.parse_from_file(str(onnx_path))  # reads external data next to the file
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MindVideoError(
            f"expected TensorRT to parse {onnx_path}",
            errors[:500] or "parser failure",
            "re-export with `mindvideo export --force`, or report the unsupported node",
        )
    config = _builder_config(trt, builder, spec, build)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MindVideoError(
            f"expected TensorRT to build the {spec.name} engine",
            "no engine (see the log above)",
            "free GPU memory, lower the profile's max (--batch/--frames) or --opt-level",
        )
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def _builder_config(trt: ModuleType, builder: Any, spec: ExportSpec, build: BuildConfig) -> Any:
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    for flag in build.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.builder_optimization_level = build.optimization_level
    if build.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile().items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    return config


@dataclasses.dataclass(frozen=True)
class EngineResult:
    network: str
    status: str  # "built" | "reused"
    plan: Path
    bytes: int
    seconds: float
    precision: str


def build_engines(
    export_dir: str | Path,
    builds: Mapping[str, BuildConfig],
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[EngineResult]:
    """Build (or reuse from the cache) one engine per network of an export folder; records them in its manifest.

    ``builds`` maps network → :class:`BuildConfig`; ``cache_dir`` defaults to ``export_dir/engines``.
    """
    say = progress or log.info
    with folder_lock(export_dir, "export"):  # the manifest is rewritten: one writer at a time
        exported = load_export(export_dir)
        target = current_target()
        for build in builds.values():
            build.check(target)
        cache = EngineCache(cache_dir or Path(export_dir) / "engines")
        results = [_build_one(exported, name, build, cache, target, force, say) for name, build in builds.items()]
        _record_engines(exported, results, target)
    return results


def _build_one(
    exported: ExportedModel,
    name: str,
    build: BuildConfig,
    cache: EngineCache,
    target: Target,
    force: bool,
    say: Callable[[str], None],
) -> EngineResult:
    spec = exported.specs[name]
    onnx_sha = exported.manifest["networks"][name]["files"][0]["sha256"]
    plugins = {"sparse_causal_attention": trt_plugin.fingerprint()} if spec.attention == "plugin" else None
    key = engine_key(onnx_sha, build, spec.profile(), target, plugins=plugins)
    plan = None if force else cache.lookup(name, key)
    if plan is not None:
        say(f"{name}: engine reused from the cache ({target.describe()}, key {key[:12]})")
        return EngineResult(name, "reused", plan, plan.stat().st_size, 0.0, build.precision)
    say(f"{name}: building a {build.precision} engine for {target.describe()} (this can take minutes)")
    start = time.perf_counter()
    plan_bytes, timing = build_engine(exported.onnx_path(name), spec, build, cache.read_timing_cache(target))
    cache.write_timing_cache(target, timing)
    plan = cache.store(name, key, plan_bytes, onnx_sha256=onnx_sha, build=build, profile=spec.profile(), target=target)
    return EngineResult(name, "built", plan, len(plan_bytes), time.perf_counter() - start, build.precision)


def _record_engines(exported: ExportedModel, results: list[EngineResult], target: Target) -> None:
    manifest = dict(exported.manifest)
    engines = dict(manifest.get("engines", {}))
    for r in results:
        rel = Path(r.plan).resolve()
        with contextlib.suppress(ValueError):  # a shared cache outside the export folder keeps its absolute path
            rel = rel.relative_to(exported.root.resolve())
        engines[r.network] = {"plan": str(rel), "precision": r.precision, "target": dataclasses.asdict(target)}
    manifest["engines"] = engines
    write_json_atomic(exported.root / MANIFEST, manifest)


def engine_for(exported: ExportedModel, network: str, target: Target | None = None) -> bytes:
    """The checked plan bytes of ``network`` for this machine (the runtime's entry point): the manifest's engine if
    it was built for this target from the current graph, else a matching one in ``engines/``; otherwise a
    :class:`MindVideoError` that says to rebuild."""
    target = target or current_target()
    onnx_sha = exported.manifest["networks"][network]["files"][0]["sha256"]
    entry = exported.manifest.get("engines", {}).get(network)
    if entry:
        plan = Path(entry["plan"])
        plan = plan if plan.is_absolute() else exported.root / plan
        if plan.with_suffix(".json").is_file():
            return load_engine(plan, target, onnx_sha)
    return load_engine(EngineCache(exported.root / "engines").find(network, target, onnx_sha), target, onnx_sha)
