"""Per-directory index objects: a cold listing costs LIST + one GET instead of a HEAD per file.

`{dir}/.dgfs/index/reference.bin` (gzip JSON) holds, for each file object of the directory, what
a HEAD returned: ETag, size, LastModified and the raw user metadata. It is not a reference (no
delta names it): deltaglider 6.2.0 hides exactly that name from `ls`, `sync` and its object
counts, as it does for the adaptive policy's keyframes, so deltaglider never shows it as a file.
It is only a hint: an entry is used only when the LIST the reader just did reports the same
ETag, size and LastModified second for that key (the rule of the SQLite record cache), so
objects written by any other tool are always HEADed. A missing, stale, foreign or corrupt
index is ignored (logged).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from core import layout
from core.errors import DgError, NotFound
from core.layout import ObjectRecord
from core.objectstore import ObjectInfo, ObjectStore

log = logging.getLogger("dgfs.dirindex")

INDEX_DIR = ".dgfs"
INDEX_NAME = f"index/{layout.REFERENCE_NAME}"
FORMAT = "dgfs-dir-index"
VERSION = 1
MAX_STORED = 64 * 2**20  # a bigger object under the index key is not ours: ignored
MAX_JSON = 512 * 2**20  # decompression bound (a gzip bomb is ignored, not expanded)
RELOAD_AFTER = 30.0  # seconds a loaded index is reused before it is fetched again


@dataclass(frozen=True)
class Entry:
    """One file object as a HEAD described it (metadata raw, as S3 returns it)."""

    etag: str
    size: int
    last_modified_ns: int
    metadata: dict[str, str]


def index_key(prefix: str) -> str:
    """The index object of directory `prefix` ('' = bucket root)."""
    return layout.join_key(prefix, f"{INDEX_DIR}/{INDEX_NAME}")


def matches(entry: Entry | ObjectRecord, obj: ObjectInfo) -> bool:
    """Whether a stored description is the listed object (ETag, size, LastModified second)."""
    if isinstance(entry, ObjectRecord):
        etag, size, modified = entry.etag, entry.stored_size, entry.last_modified_ns
    else:
        etag, size, modified = entry.etag, entry.size, entry.last_modified_ns
    return (
        bool(obj.etag)
        and etag == obj.etag
        and size == obj.size
        and modified // 10**9 == obj.last_modified_ns // 10**9
    )


def entry_of(record: ObjectRecord) -> Entry:
    """The index entry describing a record (which must carry its server ETag)."""
    meta = {k: layout.encode_value(v) for k, v in record.metadata.items()}
    return Entry(record.etag, record.stored_size, record.last_modified_ns, meta)


def encode(prefix: str, entries: dict[str, Entry]) -> bytes:
    """The index body: entries by file name (relative to `prefix`)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "prefix": prefix,
        "entries": {
            name: [e.etag, e.size, e.last_modified_ns, e.metadata] for name, e in entries.items()
        },
    }
    return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=6)


def decode(prefix: str, data: bytes) -> dict[str, Entry]:
    """Entries by file name; ValueError if `data` is not an index of `prefix`.

    Malformed single entries are dropped; the rest of the index stays usable.
    """
    inflater = zlib.decompressobj(wbits=31)
    try:
        text = inflater.decompress(data, MAX_JSON)
    except zlib.error as exc:
        raise ValueError(f"not gzip: {exc}") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"expands beyond {MAX_JSON} bytes")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError("not a dgfs directory index (format/version)")
    if doc.get("prefix") != prefix:
        raise ValueError(f"written for directory {doc.get('prefix')!r}")
    raw = doc.get("entries")
    if not isinstance(raw, dict):
        raise ValueError("no entries")
    return {name: e for name, value in raw.items() if (e := _entry(value)) is not None}


def _entry(value) -> Entry | None:
    if not (isinstance(value, list) and len(value) == 4):
        return None
    etag, size, modified, meta = value
    if not (isinstance(etag, str) and type(size) is int and type(modified) is int):
        return None
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        return None
    return Entry(etag, size, modified, meta)


def record_for(entries: dict[str, Entry], obj: ObjectInfo) -> ObjectRecord | None:
    """The record of a listed object from the index, if its entry matches the LIST."""
    entry = entries.get(obj.key.rsplit("/", 1)[-1])
    if entry is None or not matches(entry, obj):
        return None
    return layout.record_from_head(
        obj.key, entry.size, entry.etag, entry.last_modified_ns, entry.metadata
    )


def load(store: ObjectStore, prefix: str) -> dict[str, Entry]:
    """The directory's index entries; empty when there is none or it is unusable (logged)."""
    key = index_key(prefix)
    try:
        data = store.get_bytes(key, 0, MAX_STORED)
    except NotFound:
        return {}
    except DgError as exc:
        log.info("%s: directory index not read (%s); HEADing instead", key, exc)
        return {}
    if len(data) > MAX_STORED:
        log.info("%s: larger than %d bytes, not a dgfs index; ignored", key, MAX_STORED)
        return {}
    try:
        return decode(prefix, data)
    except ValueError as exc:
        log.info("%s: directory index ignored: %s", key, exc)
        return {}


def save(store: ObjectStore, prefix: str, entries: dict[str, Entry]) -> None:
    """Write the directory's index (replacing any other writer's: it is only a hint)."""
    store.put_bytes(index_key(prefix), encode(prefix, entries), {})


class IndexLoads:
    """Loaded indexes by directory, fetched at most once per RELOAD_AFTER (background GETs)."""

    def __init__(self, store: ObjectStore, workers: int = 4) -> None:
        self.store = store
        self._loads: dict[str, tuple[float, Future]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dir-index")

    def get(self, prefix: str, start: bool = True) -> Future | None:
        """A future of the directory's entries: a recent load, else a new one if `start`."""
        now = time.monotonic()
        with self._lock:
            self._loads = {p: v for p, v in self._loads.items() if now - v[0] < RELOAD_AFTER}
            known = self._loads.get(prefix)
            if known is not None or not start:
                return known[1] if known else None
            future = self._pool.submit(load, self.store, prefix)
            self._loads[prefix] = (now, future)
            return future

    def put(self, prefix: str, entries: dict[str, Entry]) -> None:
        """Remember entries just written (so an unchanged directory is not written again)."""
        future: Future = Future()
        future.set_result(entries)
        with self._lock:
            self._loads[prefix] = (time.monotonic(), future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
