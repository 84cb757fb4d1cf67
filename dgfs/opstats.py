"""Per-FUSE-operation counts, errors and latency buckets, kept by `errors.guarded`.

Plain ints updated in the trio thread (every handler runs there), read by the metrics
exporter (dgfs/metrics.py) as a copy. Always on: one perf_counter pair and a bisect per call.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# seconds; FUSE calls range from µs (cached getattr) to seconds (a cold read of a large delta)
BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


@dataclass
class OpStats:
    count: int = 0
    errors: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: +Inf


OPS: dict[str, OpStats] = {}


def record(op: str, seconds: float, failed: bool) -> None:
    stats = OPS.get(op)
    if stats is None:
        stats = OPS[op] = OpStats()
    stats.count += 1
    stats.seconds += seconds
    stats.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
    if failed:
        stats.errors += 1


def snapshot() -> dict[str, OpStats]:
    """A copy of every operation's figures (safe to read from another thread)."""
    return {
        op: OpStats(s.count, s.errors, s.seconds, list(s.buckets)) for op, s in list(OPS.items())
    }
