"""GPU-only checks (marker ``gpu``; they skip with a reason on CPU machines, including this repository's CI).

1. The exported UNet graph, run by onnxruntime on CPU, matches PyTorch on the GPU.
2. With TensorRT installed: engines build from the export, are reused from the cache, load through
   :func:`engine_for` and match onnxruntime on the spec's sample inputs.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mindvideo import kernels
from mindvideo.export import BuildConfig, build_engines, engine_for, load_export
from mindvideo.export.modules import load_network
from mindvideo.export.verify import compare, ort_session, run_ort

pytestmark = pytest.mark.gpu


def test_onnx_on_cpu_matches_pytorch_on_gpu(exported, export_ckpt):
    model = load_export(exported[0])
    spec = model.specs["unet"]
    unet = load_network("unet", export_ckpt).cuda()
    inputs = spec.sample_inputs({"batch": 2, "frames": 8}, seed=11)
    with torch.no_grad(), kernels.use_backend("reference"):
        want = unet(*(inputs[n].cuda() for n in spec.input_names)).float().cpu().numpy()
    got = run_ort(ort_session(model.onnx_path("unet")), spec, inputs)
    errors = compare(got, {"noise_pred": want})
    assert errors["noise_pred"].max_rel < 1e-3, errors


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_engines_build_reuse_and_match(exported_copy):
    import tensorrt as trt

    builds = {"unet": BuildConfig("fp16", optimization_level=2)}
    first = build_engines(exported_copy, builds)
    second = build_engines(exported_copy, builds)
    assert [r.status for r in first] == ["built"] and [r.status for r in second] == ["reused"]
    model = load_export(exported_copy)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_for(model, "unet"))
    spec = model.specs["unet"]
    inputs = spec.sample_inputs({"batch": 2, "frames": 3}, seed=5)
    context = engine.create_execution_context()
    buffers = {name: inputs[name].to(t.torch_dtype).cuda().contiguous() for name, t in zip(inputs, spec.inputs)}
    for name, tensor in buffers.items():
        context.set_input_shape(name, tuple(tensor.shape))
    shape = spec.shapes(batch=2, frames=3)["noise_pred"]
    buffers["noise_pred"] = torch.empty(shape, dtype=spec.outputs[0].torch_dtype, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    want = run_ort(ort_session(model.onnx_path("unet")), spec, inputs)
    errors = compare({"noise_pred": buffers["noise_pred"].float().cpu().numpy()}, want)
    assert errors["noise_pred"].max_rel < 3e-2, errors
