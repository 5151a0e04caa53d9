"""Benchmark scripts (``python -m mindvideo.benchmarks.<name>`` or ``python benchmarks/<name>.py``).

Each script writes ``benchmarks/results/<name>-<device>.json`` with the device, commit, command and date; speed
claims in the README come from those files only.
"""

from __future__ import annotations

# Imported by the folder's bare name from the repo root: hand over to the installed 'benchmarks' (if any).
if __name__ != "mindvideo.benchmarks":
    from mindvideo._bare_names import hand_over

    hand_over(__name__, __file__)
