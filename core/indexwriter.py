"""Keeps directory index objects (core/dirindex.py) up to date, lazily and in the background.

A directory is rewritten once it has been quiet for QUIET seconds after a change (and at
close): one delimited LIST, then an entry for every listed file whose ETag, size and
LastModified match a record the caller vouches for or an entry of the current index; files
this process wrote but never HEADed are HEADed; anything else is left out (a reader HEADs it).
Errors are logged, never raised to a user operation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core import dirindex, layout
from core.errors import DgError
from core.layout import ObjectRecord
from core.objectstore import ObjectInfo, ObjectStore

log = logging.getLogger("dgfs.dirindex")

QUIET = 3.0  # seconds without a change before a directory's index is rewritten

Known = Callable[[ObjectInfo], tuple[ObjectRecord | None, bool]]
HeadMany = Callable[[list[ObjectInfo]], list[ObjectRecord | None]]


class IndexWriter:
    """Rewrites the index of directories marked with `touch` once they are quiet.

    `known(obj)` → (record, needs_head): a trusted record of the listed object, or whether
    this process wrote it (then it is HEADed before being indexed). `head_many` HEADs objects.
    """

    def __init__(
        self,
        store: ObjectStore,
        loads: dirindex.IndexLoads,
        known: Known,
        head_many: HeadMany,
        quiet: float = QUIET,
    ) -> None:
        self.store = store
        self.loads = loads
        self.known = known
        self.head_many = head_many
        self.quiet = quiet
        self._dirty: dict[str, float] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def touch(self, prefix: str) -> None:
        """Directory `prefix` changed: rewrite its index after it has been quiet."""
        with self._cond:
            if self._closed:
                return
            self._dirty[prefix] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dir-index", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Write every pending directory now and stop the background thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        pending = self._take(lambda _: True)
        for done, prefix in enumerate(pending):
            left = len(pending) - done - 1
            if not self._write(prefix) and left:  # S3 unreachable: do not hold up the unmount
                log.warning("%d more directory index(es) left unwritten", left)
                return

    def _take(self, due) -> list[str]:
        with self._cond:
            ready = [p for p, t in self._dirty.items() if due(t)]
            for prefix in ready:
                del self._dirty[prefix]
        return ready

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                waits = [t + self.quiet - now for t in self._dirty.values()]
                if not waits or min(waits) > 0:
                    self._cond.wait(min(waits) if waits else None)
                    continue
            for prefix in self._take(lambda t: time.monotonic() - t >= self.quiet):
                self._write(prefix)

    def _write(self, prefix: str) -> bool:
        """Rewrite one directory's index; False (logged) if that failed."""
        try:
            self.rewrite(prefix)
            return True
        except (DgError, OSError) as exc:
            log.warning("directory index of %r not written: %s", prefix, exc)
        except Exception:
            log.exception("directory index of %r not written", prefix)
        return False

    def rewrite(self, prefix: str) -> None:
        """LIST `prefix` and write its index (delete it when the directory has no files)."""
        base = f"{prefix}/" if prefix else ""
        objects: list[ObjectInfo] = []
        private = False
        for page in self.store.list_pages(base):
            private = private or f"{base}{dirindex.INDEX_DIR}/" in page.prefixes
            objects += [o for o in page.objects if _is_file(o.key)]
        if not objects:
            if private:  # an index must not keep an emptied implicit directory alive
                self.store.delete(dirindex.index_key(prefix))
            return
        old_future = self.loads.get(prefix) if private else None
        old = old_future.result() if old_future is not None else {}
        records: list[ObjectRecord] = []
        to_head: list[ObjectInfo] = []
        for obj in objects:
            record, needs_head = self.known(obj)
            if record is None and not needs_head:
                record = dirindex.record_for(old, obj)
            if record is not None:
                records.append(record)
            elif needs_head:
                to_head.append(obj)
        if to_head:
            records += [r for r in self.head_many(to_head) if r is not None and r.etag]
        entries = {r.stored_key[len(base) :]: dirindex.entry_of(r) for r in records}
        if _same(entries, old):
            return
        dirindex.save(self.store, prefix, entries)
        self.loads.put(prefix, entries)
        log.debug("directory index of %r written: %d entries", prefix, len(records))


def _is_file(key: str) -> bool:
    return not key.endswith("/") and not layout.is_hidden_key(key)


def _same(new: dict[str, dirindex.Entry], old: dict[str, dirindex.Entry]) -> bool:
    """Whether the index already says exactly this (then it is not written again)."""

    def facts(e: dirindex.Entry) -> tuple:
        return e.etag, e.size, e.last_modified_ns // 10**9, e.metadata

    return new.keys() == old.keys() and all(facts(new[k]) == facts(old[k]) for k in new)
