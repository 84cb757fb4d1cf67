"""ETag-validated record cache: a listed object needs a HEAD only when its ETag is new."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from core.deltastore import DeltaStore
from core.errors import NotFound
from core.layout import ObjectRecord
from core.objectstore import ObjectInfo

DEFAULT_HEAD_CONCURRENCY = 32


class RecordCache:
    """stored key → ObjectRecord, trusted while LIST reports the same ETag and size."""

    def __init__(self, store: DeltaStore, head_concurrency: int = DEFAULT_HEAD_CONCURRENCY) -> None:
        self.store = store
        self._records: dict[str, ObjectRecord] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=head_concurrency, thread_name_prefix="head")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def remember(self, record: ObjectRecord) -> None:
        """Record what we just wrote (its ETag is unknown until the next listing)."""
        with self._lock:
            self._records[record.stored_key] = record

    def forget(self, stored_key: str) -> None:
        with self._lock:
            self._records.pop(stored_key, None)

    def _valid(self, obj: ObjectInfo) -> ObjectRecord | None:
        with self._lock:
            record = self._records.get(obj.key)
        if record is None or record.stored_size != obj.size:
            return None
        if record.etag and record.etag != obj.etag:
            return None
        if not record.etag:  # written by us: adopt the listed ETag
            record = _with_etag(record, obj)
            self.remember(record)
        return record

    def resolve(self, objects: list[ObjectInfo]) -> list[ObjectRecord | None]:
        """Records for listed objects (None where the object vanished), HEADs in parallel."""
        results: list[ObjectRecord | None] = [self._valid(o) for o in objects]
        missing = [i for i, r in enumerate(results) if r is None]
        for i, record in zip(
            missing, self._pool.map(self._head, [objects[i] for i in missing]), strict=True
        ):
            results[i] = record
        return results

    def _head(self, obj: ObjectInfo) -> ObjectRecord | None:
        try:
            record = self.store.head_record(obj.key)
        except NotFound:
            return None
        self.remember(record)
        return record


def _with_etag(record: ObjectRecord, obj: ObjectInfo) -> ObjectRecord:
    return replace(record, etag=obj.etag, last_modified_ns=obj.last_modified_ns)
