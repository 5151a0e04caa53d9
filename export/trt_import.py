"""TensorRT, imported on demand: :func:`require_tensorrt` returns the module or says how to install it."""

from __future__ import annotations

from types import ModuleType

from mindvideo.errors import MindVideoError

NOT_INSTALLED = 'TensorRT is not installed: pip install -e ".[gpu]" in the mindvideo checkout'


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`MindVideoError` saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise MindVideoError(NOT_INSTALLED, fix="--format onnx works without it") from None
    return tensorrt
