"""A cheap estimate, before any xdelta3 run, of how much of a file its reference could supply.

Fingerprints are content-defined: the `WIDTH` bytes after each occurrence of a two-byte
`ANCHOR` (about one per 64 KiB of compressed or random data), so an insertion shifts them
along with the content instead of changing them all. The estimate is the share of the
target's fingerprints found among the reference's. A target with fewer than `MIN_SAMPLES`
anchors (small files, plain text, which rarely holds the anchor bytes) gets no estimate and
is encoded as before. A reference's fingerprints (the samples' hashes, about 60 bytes per
64 KiB: 2 MB for a 2 GiB reference) are kept in memory by its SHA-256 for the last `KEEP`
references, so a series pays one read of its reference per mount.

Measured (docs/benchmarks.md, issue #17): 8 random 8 MiB files against a random reference
were each encoded for 6-8 s before being stored direct; the estimate reads each in ~20 ms.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

ANCHOR = b"\x9e\x37"
WIDTH = 48
MIN_SAMPLES = 32
CHUNK = 8 << 20
KEEP = 16  # references remembered


def fingerprints(path: Path) -> frozenset[int]:
    """Hashes of the `WIDTH` bytes after every anchor in the file (read in chunks, anchors
    across chunk boundaries included; comparable within one process)."""
    found: set[int] = set()
    tail = b""
    with path.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            data = tail + chunk
            end = len(data) if not chunk else len(data) - WIDTH - len(ANCHOR) + 1
            pos = data.find(ANCHOR)
            while 0 <= pos < end:
                sample = data[pos + len(ANCHOR) : pos + len(ANCHOR) + WIDTH]
                if len(sample) == WIDTH:
                    found.add(hash(sample))
                pos = data.find(ANCHOR, pos + 1)
            if not chunk:
                return frozenset(found)
            tail = data[max(end, 0) :]


def shared_share(target: frozenset[int], reference: frozenset[int]) -> float | None:
    """The share of the target's fingerprints that the reference has; None when the target
    has too few to tell."""
    if len(target) < MIN_SAMPLES:
        return None
    return len(target & reference) / len(target)


class SimilarityIndex:
    """References' fingerprints by SHA-256 (thread-safe, the last `KEEP` used)."""

    def __init__(self) -> None:
        self._refs: collections.OrderedDict[str, frozenset[int]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.skipped = 0  # encodes not started because the estimate said hopeless

    def reference(self, sha256: str, local: Path) -> frozenset[int]:
        """The fingerprints of the reference `sha256` (computed from `local` once)."""
        with self._lock:
            known = self._refs.get(sha256)
            if known is not None:
                self._refs.move_to_end(sha256)
                return known
        prints = fingerprints(local)
        with self._lock:
            self._refs[sha256] = prints
            while len(self._refs) > KEEP:
                self._refs.popitem(last=False)
        return prints

    def hopeless(self, target: Path, ref_sha256: str, ref_local: Path, max_ratio: float) -> bool:
        """Whether the target shares so little with the reference that its delta cannot come
        under `max_ratio`: less than half of the share it would need (1 - max_ratio)."""
        share = shared_share(fingerprints(target), self.reference(ref_sha256, ref_local))
        if share is None or share >= (1.0 - max_ratio) / 2:
            return False
        with self._lock:
            self.skipped += 1
        return True
