"""Single-flight: one producer per key at a time; concurrent callers share its entry or error."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from core.cache.entry import CacheEntry


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.waiters = 0
        self.shared: CacheEntry | None = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs `produce` once per key among concurrent callers; each caller gets its own handle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def run(self, key: Hashable, produce: Callable[[], CacheEntry]) -> CacheEntry:
        """The leader's entry (or a duplicate of it for followers); its exception for all."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
        if leader:
            return self._lead(key, flight, produce)
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.shared is not None
        try:
            return flight.shared.duplicate()
        finally:
            with self._lock:
                flight.waiters -= 1
                last = flight.waiters == 0
            if last:
                flight.shared.close()

    def _lead(
        self, key: Hashable, flight: _Flight, produce: Callable[[], CacheEntry]
    ) -> CacheEntry:
        try:
            entry = produce()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.error = exc
            flight.done.set()
            raise
        try:
            with self._lock:
                del self._flights[key]
                if flight.waiters:
                    flight.shared = entry.duplicate()
        except BaseException as exc:
            flight.error = exc
            entry.close()
            raise
        finally:
            flight.done.set()
        return entry
