"""Compile the attention kernels ahead of time for a GPU architecture, on a machine without a GPU.

The CPU interpreter runs the kernels' arithmetic but not Triton's compiler, so a construct the compiler rejects
(or a tile that spills registers) would only show on a GPU. Triton ships ``ptxas``: compiling to a cubin for an
explicit target needs no driver. Run as a script with ``TRITON_INTERPRET`` unset (the test does it in a
subprocess); prints one JSON line per kernel variant: ``{"kernel", "tile", "ok", "error", "shared", "usage"}``.

    python tests/kernels/aot_compile.py --arch 90            # one bf16 tile per kernel, d = 40 and 160 (quick)
    python tests/kernels/aot_compile.py --arch 90 --all      # every tile the autotuners may pick
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
POINTERS = {"Q", "K", "V", "Out", "Src", "SrcCount", "SrcBias"}


def _signature(fn, dtype: str, constants: dict) -> tuple[dict, dict, dict]:
    """Triton's signature/constexpr/attribute dicts for the UNet layout: unit last-dim strides, 16-aligned rest."""
    elem = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}[dtype]
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name.startswith("stride_") and name.endswith("d"):
            signature[name], constants[name] = "constexpr", 1  # stride 1 is specialised, as at launch
        elif fn.params[i].is_constexpr:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = {"Src": "*i32", "SrcCount": "*i32", "SrcBias": "*fp32"}.get(name, elem)
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def _usage(kernel) -> str:
    """Registers / spill stack / shared memory as ptxas reports them (cuobjdump from Triton's wheel)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return next((line.strip() for line in out.splitlines() if "REG:" in line), "")


def variants(everything: bool):
    """(kernel name, dtype, head dim, extra constexprs, tile) for the autotuners' candidate tiles."""
    from mindvideo.kernels import checks, sparse_causal, temporal

    grid = itertools.product(("bf16", "fp16", "fp32"), (40, 80, 160)) if everything else [("bf16", 40), ("bf16", 160)]
    for dtype, d in grid:
        q = torch.empty(0, dtype=DTYPES[dtype])
        for n in (1024, 77) if everything else (1024,):
            tiles = sparse_causal._prune(sparse_causal._CONFIGS, {"N": n, "Q": q}, BLOCK_D=checks.block_d(d))
            for c in tiles if everything else tiles[:1]:
                even = n % c.kwargs["BLOCK_N"] == 0
                yield "sparse_causal", dtype, d, {"MAX_SRC": 2, "EVEN_N": even, **c.kwargs}, c
        for frames in (2, 6, 16, 60) if everything else (6,):
            tiles = temporal._prune(temporal._CONFIGS, {"Q": q}, FRAMES=frames, BLOCK_D=checks.block_d(d))
            for c in tiles if everything else tiles[:1]:
                yield "temporal", dtype, d, {"FRAMES": frames, **c.kwargs}, c


def compile_one(name: str, dtype: str, d: int, constants: dict, config, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mindvideo.kernels import checks, sparse_causal, temporal

    fn = sparse_causal._sparse_causal_fwd_kernel.fn if name == "sparse_causal" else temporal._temporal_fwd_kernel
    constants = {
        **constants,
        "HEAD_DIM": d,
        "BLOCK_D": checks.block_d(d),
        "DOT_PRECISION": sparse_causal.dot_precision(DTYPES[dtype]),
    }
    signature, constants, attrs = _signature(fn, dtype, constants)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    row = {"kernel": name, "dtype": dtype, "head_dim": d, "tile": {**config.kwargs, **options}}
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32), options=options
        )
    except Exception as error:  # report, don't stop: one line per variant
        return {**row, "ok": False, "error": f"{type(error).__name__}: {str(error)[-500:]}"}
    return {**row, "ok": True, "shared": kernel.metadata.shared, "usage": _usage(kernel)}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off", "no"):
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90 = H100/H200, 80 = A100)")
    parser.add_argument("--all", action="store_true", help="every candidate tile, head dims 40/80/160")
    args = parser.parse_args()
    failed = 0
    for variant in variants(args.all):
        row = compile_one(*variant, arch=args.arch)
        failed += not row["ok"]
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
