"""ETag-validated record cache: a listed object needs a HEAD only when its ETag is new.

Records live in memory and, when a database path is given, in a small SQLite file (0600) so a
remount starts warm; keys and metadata are stored there in plain text (not encrypted: the file
is protected only by the private cache dir). A stored record is only ever used when LIST
reports the same ETag and size for its key, so objects changed by other clients are always
HEADed again. With `dir_index`, a cold directory is first looked up in its index object
(core/dirindex.py), under the same rule, and the index is kept up to date by
core/indexwriter.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from core import dirindex, layout
from core.deltastore import DeltaStore
from core.errors import NotFound
from core.indexwriter import IndexWriter
from core.layout import ObjectRecord
from core.objectstore import ObjectInfo

log = logging.getLogger("dgfs.metadata")

DEFAULT_HEAD_CONCURRENCY = 32
INDEX_MIN_MISSES = 4  # uncached files of one directory in a LIST page worth an index GET
INDEX_AFTER_HEADS = 32  # a reader that HEADed this many files of a directory rewrites its index
SQL_BATCH = 500  # keys per SELECT … IN (…) (SQLite allows 999 parameters on old builds)


class _Persisted:
    """(key → etag, size, last-modified, raw metadata) in SQLite; records are rebuilt from it."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # a cache: a power loss may drop the last rows (then they are HEADed again), but no
        # fsync per row (a cold listing stores one row per file)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, etag TEXT, size INTEGER,"
            " modified INTEGER, meta TEXT)"
        )
        self._lock = threading.Lock()

    def get_many(self, objects: list[ObjectInfo]) -> dict[str, ObjectRecord]:
        """Stored records still matching the listed objects (same ETag, size and second)."""
        rows: dict[str, tuple] = {}
        keys = [obj.key for obj in objects]
        with self._lock:
            for i in range(0, len(keys), SQL_BATCH):
                batch = keys[i : i + SQL_BATCH]
                marks = ",".join("?" * len(batch))
                query = (
                    f"SELECT key, etag, size, modified, meta FROM records WHERE key IN ({marks})"
                )
                for row in self._db.execute(query, batch):
                    rows[row[0]] = row[1:]
        found = {}
        for obj in objects:
            row = rows.get(obj.key)
            if row is not None and row[:2] == (obj.etag, obj.size) and _same_second(row[2], obj):
                meta = json.loads(row[3])
                found[obj.key] = layout.record_from_head(obj.key, obj.size, obj.etag, row[2], meta)
        return found

    def put(self, record: ObjectRecord) -> None:
        self.put_many([record])

    def put_many(self, records: list[ObjectRecord]) -> None:
        """Store records in one transaction."""
        rows = [
            (
                r.stored_key,
                r.etag,
                r.stored_size,
                r.last_modified_ns,
                json.dumps(layout.encode_metadata(r.metadata) if r.metadata else {}),
            )
            for r in records
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)", rows)
            finally:
                self._db.execute("COMMIT")

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE key=?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RecordCache:
    """stored key → ObjectRecord, trusted while LIST reports the same ETag and size.

    `dir_index`: read directory index objects on cold listings; `index_writes`: also keep them
    up to date (never on a read-only mount).
    """

    def __init__(
        self,
        store: DeltaStore,
        head_concurrency: int = DEFAULT_HEAD_CONCURRENCY,
        db_path: Path | None = None,
        dir_index: bool = False,
        index_writes: bool = False,
    ) -> None:
        self.store = store
        self._records: dict[str, ObjectRecord] = {}
        self._adopted: set[str] = set()  # our writes whose ETag came from a LIST, not a HEAD
        self._inflight: dict[str, Future] = {}
        self._headed: dict[str, int] = {}
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
        self._loads = dirindex.IndexLoads(store.store) if dir_index else None
        self._writer: IndexWriter | None = None
        if self._loads is not None and index_writes:
            self._writer = IndexWriter(store.store, self._loads, self._for_index, self._head_many)

    def map(self, fn, items):
        """Run `fn` over `items` on the bounded HEAD pool (results in order)."""
        return self._pool.map(fn, items)

    def close(self) -> None:
        """Write pending directory indexes, then stop the worker threads."""
        if self._writer is not None:
            self._writer.close()
        if self._loads is not None:
            self._loads.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._db is not None:
            self._db.close()

    def remember(self, record: ObjectRecord) -> None:
        """Record what we just wrote or changed (a write without a PUT ETag adopts the next
        LIST's)."""
        self._store(record)
        self._changed(record.stored_key)

    def forget(self, stored_key: str) -> None:
        """A file we deleted or moved away."""
        with self._lock:
            self._records.pop(stored_key, None)
            self._adopted.discard(stored_key)
        if self._db is not None:
            self._db.delete(stored_key)
        self._changed(stored_key)

    def index_maybe_stale(self, prefix: str) -> None:
        """A listing found no files in `prefix` but a `.dgfs/` sub-prefix: rewrite (i.e. drop)
        its index soon, so that it does not keep a directory emptied by another tool alive."""
        if self._writer is not None:
            self._writer.touch(prefix)

    def _changed(self, stored_key: str) -> None:
        if self._writer is not None:
            self._writer.touch(layout.deltaspace_of(stored_key))

    def _persist(self, records: list[ObjectRecord]) -> None:
        """Keep records learned from the server (an index) in SQLite, in one transaction."""
        if self._db is not None and records:
            try:
                self._db.put_many(records)
            except sqlite3.Error as exc:  # a cache: the next mount HEADs or reads the index
                log.warning("metadata cache not updated: %s", exc)

    def _store(self, record: ObjectRecord, adopted: bool = False) -> None:
        with self._lock:
            self._records[record.stored_key] = record
            (self._adopted.add if adopted else self._adopted.discard)(record.stored_key)
        if self._db is None:
            return
        if record.etag:
            self._db.put(record)
        else:
            # a record we just wrote, ETag unknown until the next LIST: the persisted row
            # describes the object it replaced (a self-copy keeps ETag, size and maybe the
            # second), so it must not survive to the next mount
            self._db.delete(record.stored_key)

    def _valid(self, obj: ObjectInfo, persisted: bool = True) -> ObjectRecord | None:
        """The cached record still describing the listed object: from memory, else (unless
        `persisted` is False) from SQLite."""
        with self._lock:
            record = self._records.get(obj.key)
        if record is not None and record.stored_size == obj.size:
            if record.etag == obj.etag and _same_second(record.last_modified_ns, obj):
                return record
            if record.etag == obj.etag and _put_before(record.last_modified_ns, obj):
                # written by us, ETag from the PUT response: take the exact LastModified
                record = replace(record, last_modified_ns=obj.last_modified_ns)
                self._store(record)
                return record
            if not record.etag:  # written by us: adopt the listed ETag
                record = replace(record, etag=obj.etag, last_modified_ns=obj.last_modified_ns)
                self._store(record, adopted=True)
                return record
        return self._from_db([obj])[0] if persisted else None

    def _from_db(self, objects: list[ObjectInfo]) -> list[ObjectRecord | None]:
        """Persisted records for many listed objects in one query (kept in memory)."""
        if self._db is None or not objects:
            return [None] * len(objects)
        found = self._db.get_many(objects)
        with self._lock:
            self._records.update(found)
        return [found.get(obj.key) for obj in objects]

    def prefetch(self, objects: list[ObjectInfo]) -> None:
        """Start HEADs for objects not validly cached (called per LIST page, overlapping it).

        With directory indexes, a directory with several uncached files is looked up in its
        index first (one GET); only the files it does not vouch for are HEADed.
        """
        misses = [obj for obj in objects if self._valid(obj, persisted=False) is None]
        misses = [obj for obj, r in zip(misses, self._from_db(misses), strict=True) if r is None]
        indexes = self._index_loads(misses)
        # one future per directory's batch (its result: key → record, or → the future of a
        # HEAD for what the index does not vouch for), one per HEAD otherwise
        batches: dict[str, tuple[list[ObjectInfo], Future]] = {}
        with self._lock:  # once per page: an index arriving meanwhile waits, not ping-pongs
            for obj in misses:
                if obj.key in self._inflight or self._in_memory(obj):
                    continue  # (HEADed meanwhile)
                prefix = layout.deltaspace_of(obj.key)
                if prefix in indexes:
                    if prefix not in batches:
                        batches[prefix] = ([], Future())
                    batches[prefix][0].append(obj)
                    self._inflight[obj.key] = batches[prefix][1]
                else:
                    self._inflight[obj.key] = self._pool.submit(self._head, obj)
        for prefix, (batch, future) in batches.items():
            indexes[prefix].add_done_callback(functools.partial(self._from_index, batch, future))

    def _in_memory(self, obj: ObjectInfo) -> bool:
        """Whether memory holds a record matching the listed object (lock held)."""
        record = self._records.get(obj.key)
        return record is not None and dirindex.matches(record, obj)

    def _index_loads(self, misses: list[ObjectInfo]) -> dict[str, Future]:
        """Index loads (started or recent) of the directories with enough uncached files."""
        if self._loads is None or not misses:
            return {}
        counts: dict[str, int] = {}
        for obj in misses:
            prefix = layout.deltaspace_of(obj.key)
            counts[prefix] = counts.get(prefix, 0) + 1
        loads = {}
        for prefix, count in counts.items():
            future = self._loads.get(prefix, start=count >= INDEX_MIN_MISSES)
            if future is not None:
                loads[prefix] = future
        return loads

    def resolve(self, objects: list[ObjectInfo]) -> list[ObjectRecord | None]:
        """Records for listed objects (None where the object vanished), HEADs in parallel."""
        self.prefetch(objects)
        results: list[ObjectRecord | None] = []
        for obj in objects:
            with self._lock:
                future = self._inflight.get(obj.key)
            if future is None:
                results.append(self._valid(obj) or self._head(obj))
                continue
            answer = future.result()
            if isinstance(answer, dict):  # a directory batch answered from its index
                answer = answer[obj.key]
            results.append(answer.result() if isinstance(answer, Future) else answer)
        return results

    def _from_index(self, batch: list[ObjectInfo], answer: Future, index: Future) -> None:
        """Answer a directory's batch of lookups from its loaded index; HEAD what it does not
        vouch for. Runs as the index load's done-callback: it must always answer."""
        found: dict[str, ObjectRecord] = {}
        try:
            entries = index.result()
            for obj in batch:
                record = dirindex.record_for(entries, obj)
                if record is not None:
                    found[obj.key] = record
        except Exception as exc:  # the index is only a hint: HEAD everything instead
            log.info("directory index unusable (%s); HEADing", exc)
            found = {}
        heads: dict[str, Future] = {}
        with self._lock:  # in memory before leaving _inflight, so no caller HEADs it again
            for key, record in found.items():
                self._records[key] = record
                self._adopted.discard(key)
                self._inflight.pop(key, None)
            for obj in batch:
                if obj.key not in found:
                    heads[obj.key] = self._inflight[obj.key] = Future()
        answer.set_result({**found, **heads})
        for obj in batch:
            if obj.key in heads:
                try:
                    self._pool.submit(self._head_into, obj, heads[obj.key])
                except RuntimeError as exc:  # pool shut down (closing)
                    heads[obj.key].set_exception(exc)
        self._persist(list(found.values()))  # after the waiters are answered

    def _head_into(self, obj: ObjectInfo, future: Future) -> None:
        try:
            future.set_result(self._head(obj))
        except BaseException as exc:
            future.set_exception(exc)

    def _head(self, obj: ObjectInfo, count: bool = True) -> ObjectRecord | None:
        try:
            record = self.store.head_record(obj.key)
            self._store(record)  # before leaving _inflight, so no caller HEADs it twice
        except NotFound:
            record = None
        finally:
            with self._lock:
                self._inflight.pop(obj.key, None)
        if count and record is not None and self._writer is not None:
            self._count_head(layout.deltaspace_of(obj.key))
        return record

    def _count_head(self, prefix: str) -> None:
        """A cold reader that HEADed many files of a directory indexes it for the next one."""
        with self._lock:
            self._headed[prefix] = self._headed.get(prefix, 0) + 1
            due = self._headed[prefix] >= INDEX_AFTER_HEADS
            if due:
                del self._headed[prefix]
        if due:
            self._writer.touch(prefix)

    # ------------------------------------------------------------ for the index writer

    def _for_index(self, obj: ObjectInfo) -> tuple[ObjectRecord | None, bool]:
        """(a record an index may publish for this listed object, whether to HEAD it first)."""
        record = self._valid(obj)
        with self._lock:
            known = self._records.get(obj.key)
            adopted = obj.key in self._adopted
        if adopted or (known is not None and (record is None or not known.etag)):
            # its ETag came from a LIST (only a HEAD ties metadata to an ETag), or we know an
            # older state of it (e.g. our chmod's self-copy moved its LastModified)
            return None, True
        return record, False

    def _head_many(self, objects: list[ObjectInfo]) -> list[ObjectRecord | None]:
        return list(self._pool.map(lambda o: self._head(o, count=False), objects))


def _same_second(modified_ns: int, obj: ObjectInfo) -> bool:
    """LastModified agrees (to the second: HEAD's HTTP date has no sub-second part).

    A metadata-only change (chmod by another client: a self-copy) keeps ETag and size but
    moves LastModified, so comparing it makes such changes visible.
    """
    return modified_ns // 10**9 == obj.last_modified_ns // 10**9


def _put_before(stamp_ns: int, obj: ObjectInfo) -> bool:
    """The listed object is the one a PUT answered at `stamp_ns` (its response Date): its
    LastModified is at most one second before that. A later metadata change (a self-copy by
    another client keeps ETag and size) moves LastModified past the Date, so it does not pass.
    """
    return 0 <= stamp_ns // 10**9 - obj.last_modified_ns // 10**9 <= 1
