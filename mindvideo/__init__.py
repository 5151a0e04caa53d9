"""mindvideo: MinD-Video (fMRI → video) in PyTorch, exportable to ONNX/TensorRT engines.

The core lives here (configs, models, checkpoints, pipeline, CLI); ``mindvideo.kernels``, ``mindvideo.export`` and
``mindvideo.engine`` come from the repository's top-level folders of the same names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mindvideo.errors import MindVideoError

__all__ = ["MindVideoError", "__version__"]
