"""The kernels compile for the H100/H200 architecture (sm_90) — checked on CPU with the ptxas that Triton ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kernel_cases import requires_ptxas, requires_triton

SCRIPT = Path(__file__).with_name("aot_compile.py")


@requires_triton
@requires_ptxas
def test_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90"], env=env, capture_output=True, text=True, timeout=600
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert rows, done.stderr[-3000:]
    assert {r["kernel"] for r in rows} == {"sparse_causal", "temporal"}
    for row in rows:
        assert row["ok"], row
        assert " STACK:0 " in f" {row['usage']} ", f"register spills: {row}"
    assert done.returncode == 0
