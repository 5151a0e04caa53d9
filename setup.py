"""Packaging for mindvideo.

The design card's top-level folders are installed under one namespace: ``mindvideo`` (the PyTorch core),
``mindvideo.kernels``, ``mindvideo.export``, ``mindvideo.engine`` and ``mindvideo.benchmarks``. Nothing installs a
top-level ``engine`` or ``export`` module. ``tests/`` is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

ROOT = Path(__file__).parent

# top-level folder -> installed package name
NAMESPACE = {
    "mindvideo": "mindvideo",
    "kernels": "mindvideo.kernels",
    "export": "mindvideo.export",
    "engine": "mindvideo.engine",
    "benchmarks": "mindvideo.benchmarks",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for folder, name in NAMESPACE.items():
        package_dir[name] = folder
        packages.append(name)
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = _packages()


# gcc/clang flags per extension. The sampling loop: no fused multiply-adds, so C == numpy twin bitwise. The attention
# kernel: fused multiply-adds welcome (it is checked against the torch reference to a tolerance), POSIX threads.
UNIX_FLAGS = {
    "mindvideo.engine._host_loop": ["-ffp-contract=off"],
    "mindvideo.kernels._attention_cpu": ["-pthread", "-Wno-psabi"],
}
FALLBACK = {
    "mindvideo.engine._host_loop": "using the pure-Python sampling loop",
    "mindvideo.kernels._attention_cpu": "attention on the CPU runs through torch (the sdpa backend)",
}


class OptionalBuildExt(build_ext):
    """Build the C extensions when a compiler is there; otherwise warn and keep going (the engine then uses the
    sampling loop's pure-Python twin, ``mindvideo.engine.host_loop_numpy``, and attention torch's sdpa backend),
    so an install never breaks on a missing compiler."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self.warn(f"C extensions not built ({exc}); using their Python fallbacks")

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = [*ext.extra_compile_args, "-O3", *UNIX_FLAGS.get(ext.name, [])]
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self.warn(f"building {ext.name} failed ({exc}); {FALLBACK[ext.name]}")


# optional=True: setuptools skips a failed extension when copying in place / collecting editable outputs
ext_modules = [
    Extension("mindvideo.engine._host_loop", sources=["engine/csrc/host_loop.c"], optional=True),
    Extension(
        "mindvideo.kernels._attention_cpu",
        sources=["kernels/csrc/attention_cpu.c"],
        extra_link_args=["-pthread"] if sys.platform != "win32" else [],
        optional=True,
    ),
]

setup(
    name="mindvideo",
    version="0.1.0",
    description="MinD-Video (fMRI -> video) in PyTorch, exported to ONNX/TensorRT engines for real-time decoding",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    package_data={
        "mindvideo": ["assets/**/*"],
        "mindvideo.engine": ["web/*.html"],  # the live browser view's page
        "mindvideo.benchmarks": ["results/*.json"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "numpy>=1.24",
        "scipy>=1.11",
        "scikit-learn>=1.3",
        "transformers>=4.40",
        "diffusers>=0.30",
        "safetensors>=0.4",
        "click>=8.1",
        "tqdm>=4.66",
        "imageio>=2.31",
        "av>=12",
        "nibabel>=5.2",
        "h5py>=3.9",
        "matplotlib>=3.8",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "polygraphy>=0.49",
        "onnx-graphsurgeon>=0.5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "scikit-image>=0.22",
            "transformers>=4.40",
            "triton>=3.0",
            "ray>=2.40,<3",
            "pylsl>=1.17",
        ],
        "ray": ["ray>=2.40,<3"],
        "lsl": ["pylsl>=1.17"],
        "gpu": ["onnxruntime-gpu>=1.18", "tensorrt>=10.9,<11", "cuda-python>=12.3", "polygraphy>=0.49", "triton>=3.0"],
        "dev": ["ruff>=0.5", "triton>=3.0", "polygraphy>=0.49"],
    },
    entry_points={"console_scripts": ["mindvideo=mindvideo.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
