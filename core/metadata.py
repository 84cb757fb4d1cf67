"""ETag-validated record cache: a listed object needs a HEAD only when its ETag is new.

Records live in memory and, when a database path is given, in a small SQLite file (0600) so a
remount starts warm. A stored record is only ever used when LIST reports the same ETag and
size for its key, so objects changed by other clients are always HEADed again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from core import layout
from core.deltastore import DeltaStore
from core.errors import NotFound
from core.layout import ObjectRecord
from core.objectstore import ObjectInfo

log = logging.getLogger("dgfs.metadata")

DEFAULT_HEAD_CONCURRENCY = 32


class _Persisted:
    """(key → etag, size, last-modified, raw metadata) in SQLite; records are rebuilt from it."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, etag TEXT, size INTEGER,"
            " modified INTEGER, meta TEXT)"
        )
        self._lock = threading.Lock()

    def get(self, obj: ObjectInfo) -> ObjectRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT modified, meta FROM records WHERE key=? AND etag=? AND size=?",
                (obj.key, obj.etag, obj.size),
            ).fetchone()
        if row is None or not _same_second(row[0], obj):
            return None
        return layout.record_from_head(obj.key, obj.size, obj.etag, row[0], json.loads(row[1]))

    def put(self, record: ObjectRecord) -> None:
        raw = layout.encode_metadata(record.metadata) if record.metadata else {}
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
                (
                    record.stored_key,
                    record.etag,
                    record.stored_size,
                    record.last_modified_ns,
                    json.dumps(raw),
                ),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE key=?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RecordCache:
    """stored key → ObjectRecord, trusted while LIST reports the same ETag and size."""

    def __init__(
        self,
        store: DeltaStore,
        head_concurrency: int = DEFAULT_HEAD_CONCURRENCY,
        db_path: Path | None = None,
    ) -> None:
        self.store = store
        self._records: dict[str, ObjectRecord] = {}
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=head_concurrency, thread_name_prefix="head")
        self._db: _Persisted | None = None
        if db_path is not None:
            try:
                self._db = _Persisted(db_path)
            except (OSError, sqlite3.Error) as exc:
                log.warning(
                    "metadata cache %s unusable (%s); keeping it in memory only", db_path, exc
                )

    def map(self, fn, items):
        """Run `fn` over `items` on the bounded HEAD pool (results in order)."""
        return self._pool.map(fn, items)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._db is not None:
            self._db.close()

    def remember(self, record: ObjectRecord) -> None:
        """Record what we just wrote or HEADed (written records get their ETag at next LIST)."""
        with self._lock:
            self._records[record.stored_key] = record
        if self._db is None:
            return
        if record.etag:
            self._db.put(record)
        else:
            # a record we just wrote, ETag unknown until the next LIST: the persisted row
            # describes the object it replaced (a self-copy keeps ETag, size and maybe the
            # second), so it must not survive to the next mount
            self._db.delete(record.stored_key)

    def forget(self, stored_key: str) -> None:
        with self._lock:
            self._records.pop(stored_key, None)
        if self._db is not None:
            self._db.delete(stored_key)

    def _valid(self, obj: ObjectInfo) -> ObjectRecord | None:
        with self._lock:
            record = self._records.get(obj.key)
        if record is not None and record.stored_size == obj.size:
            if record.etag == obj.etag and _same_second(record.last_modified_ns, obj):
                return record
            if not record.etag:  # written by us: adopt the listed ETag
                record = replace(record, etag=obj.etag, last_modified_ns=obj.last_modified_ns)
                self.remember(record)
                return record
        if self._db is not None:
            record = self._db.get(obj)
            if record is not None:
                with self._lock:
                    self._records[obj.key] = record
                return record
        return None

    def prefetch(self, objects: list[ObjectInfo]) -> None:
        """Start HEADs for objects not validly cached (called per LIST page, overlapping it)."""
        for obj in objects:
            if self._valid(obj) is not None:
                continue
            with self._lock:
                if obj.key in self._inflight:
                    continue
                self._inflight[obj.key] = self._pool.submit(self._head, obj)

    def resolve(self, objects: list[ObjectInfo]) -> list[ObjectRecord | None]:
        """Records for listed objects (None where the object vanished), HEADs in parallel."""
        self.prefetch(objects)
        results: list[ObjectRecord | None] = []
        for obj in objects:
            record = self._valid(obj)
            if record is None:
                with self._lock:
                    future = self._inflight.get(obj.key)
                record = future.result() if future is not None else self._head(obj)
            results.append(record)
        return results

    def _head(self, obj: ObjectInfo) -> ObjectRecord | None:
        try:
            record = self.store.head_record(obj.key)
            self.remember(record)  # before leaving _inflight, so no caller HEADs it twice
        except NotFound:
            record = None
        finally:
            with self._lock:
                self._inflight.pop(obj.key, None)
        return record


def _same_second(modified_ns: int, obj: ObjectInfo) -> bool:
    """LastModified agrees (to the second: HEAD's HTTP date has no sub-second part).

    A metadata-only change (chmod by another client: a self-copy) keeps ETag and size but
    moves LastModified, so comparing it makes such changes visible.
    """
    return modified_ns // 10**9 == obj.last_modified_ns // 10**9
