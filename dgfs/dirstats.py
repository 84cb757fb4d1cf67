"""Directory and bucket stats xattrs, served from the last computed value while a refresh runs.

`ls -l`/`getfattr` must never hang on a large subtree: a directory's figures are computed in a
worker thread; a caller waits at most `WAIT_SECONDS` for the first computation (the bucket-wide
figures at the root are never waited for) and later calls get the cached value, refreshed in the
background once it is older than the metadata TTL or after a local change below it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import trio

from core.stats import bucket_stats, deltaspace_stats, format_xattrs

log = logging.getLogger("dgfs.stats")

WAIT_SECONDS = 2.0


@dataclass
class _Entry:
    values: dict[str, str] | None = None
    computed: float = 0.0
    stale: bool = True
    running: trio.Event | None = None


class DirStats:
    """Cached `user.dg.dir.*` / `user.dg.bucket.*` values per directory path."""

    def __init__(self, store, records, key_of, ttl: float, limiter: trio.CapacityLimiter) -> None:
        self.store = store
        self.records = records
        self.key_of = key_of
        self.ttl = ttl
        self.limiter = limiter
        self.nursery: trio.Nursery | None = None
        self._entries: dict[tuple[str, bool], _Entry] = {}

    def invalidate(self, path: str) -> None:
        """A local change in `path`: its figures and every ancestor's bucket figures are stale."""
        for (p, _), entry in self._entries.items():
            if p == path or p == "":
                entry.stale = True

    async def values(self, path: str, root: bool) -> dict[str, str]:
        """The xattr values for a directory (possibly from the last computation)."""
        entry = self._entries.setdefault((path, False), _Entry())
        await self._fresh(entry, path, bucket=False, wait=True)
        out = dict(entry.values or {})
        if root:
            total = self._entries.setdefault((path, True), _Entry())
            await self._fresh(total, path, bucket=True, wait=False)
            out.update(total.values or {})
        return out

    async def _fresh(self, entry: _Entry, path: str, bucket: bool, wait: bool) -> None:
        expired = time.monotonic() - entry.computed > self.ttl
        if entry.running is None and (entry.values is None or entry.stale or expired):
            entry.running = trio.Event()
            if self.nursery is None:
                await self._compute(entry, path, bucket)
            else:
                self.nursery.start_soon(self._compute, entry, path, bucket)
        if entry.values is None and entry.running is not None and wait:
            with trio.move_on_after(WAIT_SECONDS):
                await entry.running.wait()

    async def _compute(self, entry: _Entry, path: str, bucket: bool) -> None:
        entry.stale = False
        try:
            fn = self._bucket_values if bucket else self._dir_values
            entry.values = await trio.to_thread.run_sync(
                functools.partial(fn, self.key_of(path)), limiter=self.limiter
            )
            entry.computed = time.monotonic()
        except Exception as exc:
            log.warning("stats of %r failed: %s", path, exc)
        finally:
            if entry.running is not None:
                entry.running.set()
            entry.running = None

    def _dir_values(self, prefix: str) -> dict[str, str]:
        return format_xattrs(deltaspace_stats(self.store, prefix, self.records))

    def _bucket_values(self, prefix: str) -> dict[str, str]:
        figures = bucket_stats(self.store, prefix, self.records)
        values = format_xattrs(figures.total, root=True, bucket=figures)
        return {k: v for k, v in values.items() if k.startswith("user.dg.bucket.")}
