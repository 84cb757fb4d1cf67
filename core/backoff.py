"""Back off from delta attempts that keep failing (incompressible series, random data).

Every delta-eligible file costs an xdelta3 run before it can be stored direct: about 13 ms
for a 64 KiB file, 1.5 s for a 10 MB wheel that shares nothing with its reference. When the
last `FAILURES_BEFORE_SKIP` attempts for one (deltaspace, suffix) all ended direct, later
files of that kind skip the attempt, with a growing gap (1, 2, 4 … up to `MAX_GAP` files)
between re-probes; one delta that pays resets the count. A skipped file is stored direct,
exactly as its failed attempt would have stored it; at worst a series that starts to
compress again is noticed `MAX_GAP` files late.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from core.eligibility import suffix_of

FAILURES_BEFORE_SKIP = 3
MAX_GAP = 16
MEMORY = 4096  # (deltaspace, suffix) pairs remembered (then forgotten at once)


@dataclass
class _Kind:
    failures: int = 0  # consecutive attempts stored direct
    to_skip: int = 0  # files still to store direct without an attempt


class DeltaBackoff:
    """Per (deltaspace, suffix): whether the next file is worth an xdelta3 attempt."""

    def __init__(self) -> None:
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._lock = threading.Lock()
        self.skipped = 0  # attempts saved, for `dgfs status`

    def should_try(self, prefix: str, name: str) -> bool:
        """False when recent attempts for this kind failed and this file is in the gap."""
        with self._lock:
            kind = self._kinds.get((prefix, suffix_of(name)))
            if kind is None or kind.to_skip == 0:
                return True
            kind.to_skip -= 1
            self.skipped += 1
            return False

    def record(self, prefix: str, name: str, paid: bool) -> None:
        """The outcome of an attempt: `paid` if the file was stored as a delta."""
        key = (prefix, suffix_of(name))
        with self._lock:
            if paid:
                self._kinds.pop(key, None)
                return
            if key not in self._kinds and len(self._kinds) >= MEMORY:
                self._kinds.clear()
            kind = self._kinds.setdefault(key, _Kind())
            kind.failures += 1
            if kind.failures >= FAILURES_BEFORE_SKIP:
                kind.to_skip = min(2 ** (kind.failures - FAILURES_BEFORE_SKIP), MAX_GAP)
