"""Benchmark scripts (``python -m mindvideo.benchmarks.<name>`` or ``python benchmarks/<name>.py``).

Each script writes ``benchmarks/results/<name>-<device>.json`` with the device, commit, command and date; speed
claims in the README come from those files only.
"""
