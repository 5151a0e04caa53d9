"""The streaming decoder's behind-schedule policy and its report: what happens when generation falls behind.

:class:`Controller` holds the degradation level of the ``skip-frames`` / ``lower-steps`` policies (halving the
frames / steps per clip down to a floor, raising them back once on time); :class:`StreamStats` counts what every
policy did and keeps the per-TR records in a constant-memory ring (:class:`RecordRing`). See
:mod:`mindvideo.engine.stream` for the policies themselves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

POLICIES = ("drop-oldest", "skip-frames", "lower-steps", "block")
ON_BAD_TR = ("hold", "skip", "stop")  # what a rejected TR does (see StreamingDecoder)
DEFAULT_MAX_QUEUE = {"drop-oldest": 1, "skip-frames": 4, "lower-steps": 4, "block": 8}
HISTORY = 50_000  # per-TR records kept (a ring of 52-byte rows: 28 h at TR 2 s in 2.6 MB); older ones are forgotten
RECORD = np.dtype(  # one per-TR record; frames / steps = -1: generate's default was used
    {
        "names": ["tr", "latency_s", "generate_s", "arrival", "done", "queued", "frames", "steps"],
        "formats": ["i8", "f8", "f8", "f8", "f8", "i4", "i4", "i4"],
    }
)


# --------------------------------------------------------------------------------------------------- policy


def _levels(nominal: int, floor: int) -> list[int]:
    """Settings from ``nominal`` halving down to ``floor``: 8, 1 → [8, 4, 2, 1]."""
    values = [nominal]
    while values[-1] > floor:
        values.append(max(floor, math.ceil(values[-1] / 2)))
    return values


class Controller:
    """The behind-schedule policy for ``skip-frames`` / ``lower-steps``: the current level and its settings."""

    def __init__(self, policy: str, frames: int | None, steps: int | None, floors: tuple[int, int], recover: int):
        self.knob = {"skip-frames": "frames", "lower-steps": "steps"}.get(policy)
        self.fixed = {k: v for k, v in (("frames", frames), ("steps", steps)) if v is not None}
        nominal = self.fixed.get(self.knob, 1) if self.knob else 1
        self.values = _levels(nominal, floors[0] if self.knob == "frames" else floors[1])
        self.level, self.on_time, self.recover, self.at_floor_warned = 0, 0, recover, False

    def settings(self) -> dict[str, int]:
        """Keyword arguments for ``generate`` at the current level."""
        return {**self.fixed, self.knob: self.values[self.level]} if self.knob else dict(self.fixed)

    @property
    def degraded(self) -> bool:
        return self.level > 0

    def before(self, behind: bool, why: str) -> str | None:
        """Called as a job is picked; lowers the setting one level when behind. Returns a log message or None."""
        if not behind or not self.knob:
            self.on_time += not behind
            return None
        self.on_time = 0
        if self.level + 1 < len(self.values):
            self.level += 1
            old, new = self.values[self.level - 1], self.values[self.level]
            return f"behind schedule ({why}): lowering {self.knob} {old} → {new} (floor {self.values[-1]})"
        if not self.at_floor_warned:
            self.at_floor_warned = True
            floor = f"{self.knob} {self.values[-1]}"
            return f"behind schedule ({why}) at the floor ({floor}); the queue bound drops windows when full"
        return None

    def after(self, generate_s: float, budget_s: float) -> str | None:
        """Called after a clip; raises the setting back once on time and the estimate fits the budget."""
        if not self.knob or self.level == 0 or self.on_time < self.recover:
            return None
        estimate = generate_s * self.values[self.level - 1] / self.values[self.level]
        if estimate >= 0.8 * budget_s:
            return None
        self.level, self.on_time, self.at_floor_warned = self.level - 1, 0, False
        old, new = self.values[self.level + 1], self.values[self.level]
        return f"caught up: raising {self.knob} {old} → {new} (estimated {estimate:.3f} s per clip)"


# --------------------------------------------------------------------------------------------------- report


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    p50, p95 = np.percentile(a, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": float(a.max()), "mean": float(a.mean())}


class RecordRing:
    """The latest ``capacity`` per-TR records in a preallocated structured array (:data:`RECORD`): memory does not
    grow with the scan."""

    def __init__(self, capacity: int):
        self.rows = np.zeros(capacity, RECORD)
        self.count = 0  # records appended in all

    def append(self, row: tuple) -> None:
        self.rows[self.count % len(self.rows)] = row
        self.count += 1

    def _ordered(self) -> np.ndarray:
        n = len(self.rows)
        if self.count <= n:
            return self.rows[: self.count]
        return np.roll(self.rows, -(self.count % n))

    def column(self, name: str) -> np.ndarray:
        return self._ordered()[name]

    def to_list(self) -> list[dict[str, Any]]:
        """Oldest first; ``frames`` / ``steps`` are left out where generate's defaults were used."""
        out = []
        for row in self._ordered().tolist():
            record = dict(zip(RECORD.names, row))
            out.append({k: v for k, v in record.items() if v != -1 or k not in ("frames", "steps")})
        return out


@dataclasses.dataclass
class StreamStats:
    """Counters and per-TR records (latest :data:`HISTORY`) of one stream."""

    policy: str
    trs_in: int = 0  # frames pushed
    windows: int = 0  # complete windows formed (clips expected)
    processed: int = 0
    degraded: int = 0
    cold: int = 0  # clips whose window held a frame cleaned during warm-up
    policy_actions: int = 0  # level changes and floor warnings
    max_queue_depth: int = 0
    dropped: list[int] = dataclasses.field(default_factory=list)  # TR indices
    skipped: list[int] = dataclasses.field(default_factory=list)  # windows not decoded: they held a bad TR (skip)
    bad: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # rejected TRs: index, tr, reason, action
    records: RecordRing = dataclasses.field(default_factory=lambda: RecordRing(HISTORY))

    def summary(self) -> dict[str, Any]:
        """Counters and latency percentiles in seconds (``latency_s``: arrival → frames out of every sink)."""
        return {
            "policy": self.policy,
            "trs_in": self.trs_in,
            "windows": self.windows,
            "processed": self.processed,
            "dropped": len(self.dropped),
            "dropped_trs": list(self.dropped),
            "bad": len(self.bad),
            "bad_trs": [dict(b) for b in self.bad],
            "skipped": len(self.skipped),
            "skipped_trs": list(self.skipped),
            "degraded": self.degraded,
            "cold": self.cold,
            "policy_actions": self.policy_actions,
            "max_queue_depth": self.max_queue_depth,
            "latency_s": _percentiles(self.records.column("latency_s")),
            "generate_s": _percentiles(self.records.column("generate_s")),
        }
