"""``mindvideo.export``: checkpoints → verified ONNX graphs → TensorRT engines, and the checks the runtime loads them
with.

Exporting (``mindvideo export`` wraps these)::

    from mindvideo.export import ExportSettings, SpecOptions, Axis, export_onnx
    result = export_onnx("ckpt/", "exported/", ExportSettings(spec=SpecOptions(precision="fp16")))

Loading (the runtime's side)::

    from mindvideo.export import load_export, engine_for
    exported = load_export("exported/")           # manifest + every file's size and sha256 checked
    spec = exported.specs["unet"]                 # names, dtypes, profile → buffers: spec.max_shapes()
    path = exported.onnx_path("unet")             # for onnxruntime / TensorRT's parser
    plan = engine_for(exported, "unet")           # TensorRT plan bytes for this GPU, or a "rebuild" error

Modules: :mod:`.spec` (ExportSpec), :mod:`.modules` (what is traced), :mod:`.graph` and :mod:`.rewrite` (ONNX
export, cleanup, attention canonicalisation), :mod:`.verify` (onnxruntime vs PyTorch), :mod:`.onnx` (the export
with its cache), :mod:`.manifest` (manifest.json, hashes, load checks), :mod:`.cache` (engine cache, keys,
records), :mod:`.tensorrt` (engine builds; needs the ``gpu`` extra: ``pip install -e ".[gpu]"``).
"""

from __future__ import annotations

if __name__ == "mindvideo.export":
    from .cache import BuildConfig, EngineCache, EngineRecord, Target, check_record, engine_key, load_engine
    from .manifest import ExportedModel, check_onnx_file, load_export, read_manifest
    from .modules import VAEDecoderForExport, load_network, network_module
    from .onnx import ExportResult, ExportSettings, NetworkResult, export_onnx, inspect_checkpoint
    from .spec import NETWORKS, Axis, ExportSpec, NetworkShapes, SpecOptions, TensorSpec, build_specs
    from .tensorrt import build_engines, current_target, engine_for
    from .trt_import import require_tensorrt
    from .verify import TOLERANCE, VerificationError

    __all__ = [
        "NETWORKS",
        "TOLERANCE",
        "Axis",
        "BuildConfig",
        "EngineCache",
        "EngineRecord",
        "ExportResult",
        "ExportSettings",
        "ExportSpec",
        "ExportedModel",
        "NetworkResult",
        "NetworkShapes",
        "SpecOptions",
        "Target",
        "TensorSpec",
        "VAEDecoderForExport",
        "VerificationError",
        "build_engines",
        "build_specs",
        "check_onnx_file",
        "check_record",
        "current_target",
        "engine_for",
        "engine_key",
        "export_onnx",
        "inspect_checkpoint",
        "load_engine",
        "load_export",
        "load_network",
        "network_module",
        "read_manifest",
        "require_tensorrt",
    ]
else:  # the folder imported by its bare name from the repo root: hand over to the installed 'export' (if any)
    from mindvideo._bare_names import hand_over

    hand_over(__name__, __file__)
