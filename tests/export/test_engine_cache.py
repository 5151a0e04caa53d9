"""The TensorRT engine cache without TensorRT: keys, records, atomic store, and every refusal on load.

Plans here are fake bytes; the record beside them is our own engine header, so nothing of TensorRT is mocked.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from mindvideo.errors import MindVideoError
from mindvideo.export.cache import BuildConfig, EngineCache, EngineRecord, Target, engine_key, load_engine
from mindvideo.export.manifest import ExportedModel
from mindvideo.export.tensorrt import engine_for

H100 = Target("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
PROFILE = {"sample": ((1, 4, 1, 32, 32), (2, 4, 8, 32, 32), (4, 4, 16, 32, 32))}
ONNX_SHA = "a" * 64
PLAN = b"\x00fake-tensorrt-plan\xff" * 64


@pytest.fixture
def cache(tmp_path):
    return EngineCache(tmp_path / "engines")


def stored(cache: EngineCache, network: str = "unet", target: Target = H100, onnx_sha: str = ONNX_SHA):
    build = BuildConfig("fp16")
    key = engine_key(onnx_sha, build, PROFILE, target)
    return cache.store(network, key, PLAN, onnx_sha256=onnx_sha, build=build, profile=PROFILE, target=target), key


def test_key_changes_with_every_input():
    base = engine_key(ONNX_SHA, BuildConfig("fp16"), PROFILE, H100)
    assert base == engine_key(ONNX_SHA, BuildConfig("fp16"), PROFILE, H100)
    variants = [
        engine_key("b" * 64, BuildConfig("fp16"), PROFILE, H100),
        engine_key(ONNX_SHA, BuildConfig("bf16"), PROFILE, H100),
        engine_key(ONNX_SHA, BuildConfig("fp16", optimization_level=5), PROFILE, H100),
        engine_key(ONNX_SHA, BuildConfig("fp16"), {"sample": (*PROFILE["sample"][:2], (8, 4, 16, 32, 32))}, H100),
        engine_key(ONNX_SHA, BuildConfig("fp16"), PROFILE, dataclasses.replace(H100, trt_version="10.4.0")),
        engine_key(ONNX_SHA, BuildConfig("fp16"), PROFILE, Target("10.3.0", "NVIDIA H200", "9.0")),
        engine_key(ONNX_SHA, BuildConfig("fp16"), PROFILE, Target("10.3.0", "NVIDIA H100 80GB HBM3", "8.9")),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_store_then_load_round_trip(cache):
    plan, key = stored(cache)
    record = EngineRecord.read(plan.with_suffix(".json"))
    assert record.key == key and record.target == H100 and record.engine_bytes == len(PLAN)
    assert record.build["flags"] == ["TF32", "FP16"]
    assert load_engine(plan, H100, ONNX_SHA) == PLAN
    assert cache.lookup("unet", key) == plan
    assert cache.find("unet", H100, ONNX_SHA) == plan
    assert not list(cache.root.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (dataclasses.replace(H100, trt_version="10.4.0"), "TensorRT 10.4.0"),
        (Target("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0"), "NVIDIA A100"),
    ],
)
def test_engine_for_another_gpu_or_tensorrt_is_refused(cache, target, message):
    plan, _ = stored(cache)
    with pytest.raises(MindVideoError, match=message) as info:
        load_engine(plan, target, ONNX_SHA)
    assert "rebuild" in str(info.value)


def test_engine_of_another_graph_is_refused(cache):
    plan, _ = stored(cache)
    with pytest.raises(MindVideoError, match="another model or export"):
        load_engine(plan, H100, "c" * 64)


def test_truncated_or_corrupt_plan_is_refused(cache):
    plan, key = stored(cache)
    plan.write_bytes(PLAN[:100])
    with pytest.raises(MindVideoError, match="truncated"):
        load_engine(plan, H100, ONNX_SHA)
    plan.write_bytes(PLAN[:-1] + b"\x00")
    with pytest.raises(MindVideoError, match="corrupt"):
        load_engine(plan, H100, ONNX_SHA)
    assert cache.lookup("unet", key) is None  # a damaged entry is a miss: the builder rebuilds it


def test_missing_or_foreign_record_is_refused(cache):
    plan, _ = stored(cache)
    record = plan.with_suffix(".json")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(MindVideoError, match="mindvideo-engine"):
        load_engine(plan, H100)
    record.write_text("{ not json")
    with pytest.raises(MindVideoError, match="record"):
        load_engine(plan, H100)
    record.unlink()
    with pytest.raises(MindVideoError, match="no such file"):
        load_engine(plan, H100)


def test_find_names_the_targets_the_cache_holds(cache):
    stored(cache, target=Target("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0"))
    with pytest.raises(MindVideoError, match=r"A100.*rebuild"):
        cache.find("unet", H100, ONNX_SHA)
    with pytest.raises(MindVideoError, match="no engine"):
        cache.find("vae_decoder", H100, ONNX_SHA)


def test_precision_needs_a_capable_gpu():
    BuildConfig("fp8").check(H100)
    with pytest.raises(MindVideoError, match=r"8\.9"):
        BuildConfig("fp8").check(Target("10.3.0", "NVIDIA A100", "8.0"))
    with pytest.raises(MindVideoError, match=r"8\.0"):
        BuildConfig("bf16").check(Target("10.3.0", "Tesla T4", "7.5"))
    with pytest.raises(MindVideoError, match="precision"):
        BuildConfig("int3")


def test_timing_cache_is_per_target_and_atomic(cache):
    assert cache.read_timing_cache(H100) == b""
    cache.write_timing_cache(H100, b"timings")
    assert cache.read_timing_cache(H100) == b"timings"
    assert cache.read_timing_cache(dataclasses.replace(H100, trt_version="10.4.0")) == b""
    assert cache.timing_cache_path(H100).name == "timing-trt10.3.0-sm90-nvidia-h100-80gb-hbm3.cache"


def test_engine_for_uses_the_manifest_entry_then_the_cache(cache, tmp_path):
    plan, _ = stored(cache)
    manifest = {
        "networks": {"unet": {"files": [{"path": "onnx/unet.onnx", "sha256": ONNX_SHA, "bytes": 1}]}},
        "engines": {"unet": {"plan": str(plan.relative_to(tmp_path))}},
    }
    exported = ExportedModel(tmp_path, manifest)
    assert engine_for(exported, "unet", H100) == PLAN
    del manifest["engines"]["unet"]
    assert engine_for(exported, "unet", H100) == PLAN  # found by searching engines/
    with pytest.raises(MindVideoError, match="rebuild"):
        engine_for(exported, "unet", dataclasses.replace(H100, trt_version="10.4.0"))
