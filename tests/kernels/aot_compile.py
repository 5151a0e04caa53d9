"""Compile the attention kernels ahead of time for a GPU architecture, on a machine without a GPU.

The CPU interpreter runs the kernels' arithmetic but not Triton's compiler, so a construct the compiler rejects
(or a tile that spills registers) would only show on a GPU. Triton ships ``ptxas``: compiling to a cubin for an
explicit target needs no driver. Run as a script with ``TRITON_INTERPRET`` unset (the test does it in a
subprocess); prints one JSON line per kernel variant: ``{"kernel", "tile", "ok", "error", "shared", "usage"}``
(``--plugin``: the TensorRT plugin kernel through :func:`mindvideo.kernels.aot.compile_sparse_causal_plugin`, with
its PTX entry ``name``, the entry's parameter types ``params``, the indices of those it reads ``params_read`` and
``block_m`` added).

    python tests/kernels/aot_compile.py --arch 90            # one bf16 tile per kernel, d = 40 and 160 (quick)
    python tests/kernels/aot_compile.py --arch 90 --all      # every tile the autotuners may pick
    python tests/kernels/aot_compile.py --arch 90 --plugin   # the plugin kernel, 16-bit at d = 40/64/80/160, fp32
    python tests/kernels/aot_compile.py --arch 90 --plugin --all   # × even N, × three offset lists
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys

import torch

from mindvideo.kernels.aot import resource_usage

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
    return {**row, "ok": True, "shared": kernel.metadata.shared, "usage": resource_usage(kernel.asm["cubin"])}


def plugin_variants(everything: bool):
    """(dtype, head dim, frame offsets, even N) for the plugin kernel: every tile of the table, 16-bit at the SD-1.5
    head dims and 64; the quick set adds one even-N three-offset variant (one more unrolled key loop)."""
    if everything:
        offsets = ((-2, -1), (None, -1), (-3, -2, -1))
        yield from itertools.product(("bf16", "fp16", "fp32"), (40, 64, 80, 160), offsets, (False, True))
        return
    yield from itertools.product(("bf16", "fp16"), (40, 64, 80, 160), [(-2, -1)], [False])
    yield "bf16", 40, (None, -2, -1), True
    yield from itertools.product(["fp32"], (40, 80, 160), [(-2, -1)], [False])


def entry_params(ptx: str, name: str) -> list[str] | None:
    """The PTX types of the ``.entry name(...)`` parameters in order (``u64`` for a pointer), or None without one."""
    entry = re.search(rf"\.entry\s+{re.escape(name)}\s*\(([^)]*)\)", ptx)
    return None if entry is None else re.findall(r"\.param\s+\.(\w+)", entry.group(1))


def params_read(ptx: str, name: str) -> list[int]:
    """The indices of the entry parameters the kernel loads (``ld.param``): Triton's scratch pointers must not be."""
    return sorted({int(i) for i in re.findall(rf"ld\.param[\w.]*\s+[^,]+,\s*\[{re.escape(name)}_param_(\d+)", ptx)})


def compile_plugin(dtype: str, d: int, offsets: tuple, even_n: bool, arch: int) -> dict:
    from mindvideo.kernels import aot

    row = {"kernel": "sparse_causal_plugin", "dtype": dtype, "head_dim": d, "offsets": offsets, "even_n": even_n}
    try:
        kernel = aot.compile_sparse_causal_plugin(dtype, 8, d, offsets, None, even_n=even_n, arch=arch)
    except Exception as error:
        return {**row, "ok": False, "error": f"{type(error).__name__}: {str(error)[-500:]}"}
    return {
        **row,
        "tile": [kernel.block_m, kernel.block_n, kernel.num_warps, kernel.num_stages],
        "ok": True,
        "name": kernel.name,
        "params": entry_params(kernel.ptx, kernel.name),
        "params_read": params_read(kernel.ptx, kernel.name),
        "block_m": kernel.block_m,
        "shared": kernel.shared,
        "usage": resource_usage(kernel.cubin),
    }


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off", "no"):
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90 = H100/H200, 80 = A100)")
    parser.add_argument("--all", action="store_true", help="every candidate tile, head dims 40/80/160")
    parser.add_argument("--plugin", action="store_true", help="the TensorRT plugin kernel instead")
    args = parser.parse_args()
    failed = 0
    if args.plugin:
        rows = (compile_plugin(*variant, arch=args.arch) for variant in plugin_variants(args.all))
    else:
        rows = (compile_one(*variant, arch=args.arch) for variant in variants(args.all))
    for row in rows:
        failed += not row["ok"]
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
