"""Bounds on what canonicalizing an archive may cost (against zip bombs and deep nesting)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How much an archive may inflate to, how many streams it may hold, how deep it may nest."""

    inflate_ratio: int = 64  # inflated bytes allowed per input byte ...
    inflate_slack: int = 64 * MIB  # ... plus this much
    max_inflated: int = 16 << 30  # and never more than this
    max_members: int = 200_000  # zip entries plus deflate streams, all levels
    max_depth: int = 2  # containers inside containers (zip holding .gz: 2)

    def inflate_cap(self, size: int) -> int:
        """The most bytes an input of `size` bytes may inflate to, all streams together."""
        return min(self.max_inflated, self.inflate_ratio * size + self.inflate_slack)


DEFAULT_LIMITS = Limits()


class OverLimit(Exception):
    """Canonicalizing would exceed a limit: the file is stored as it is."""


class Budget:
    """Counts inflated bytes and members against the limits of one input file."""

    def __init__(self, limits: Limits, size: int) -> None:
        self.limits = limits
        self._cap = limits.inflate_cap(size)
        self._inflated = 0
        self._members = 0

    def inflate(self, n: int) -> None:
        """Charge `n` more inflated bytes."""
        self._inflated += n
        if self._inflated > self._cap:
            raise OverLimit(f"inflates past {self._cap} bytes")

    def member(self) -> None:
        """Charge one more member or stream."""
        self._members += 1
        if self._members > self.limits.max_members:
            raise OverLimit(f"more than {self.limits.max_members} members")
