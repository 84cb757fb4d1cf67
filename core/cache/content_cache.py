"""ContentCache: memory LRU in front of the encrypted disk CAS, with single-flight fills,
a (bucket, key, etag) index for objects without a SHA-256, and degraded memory-only mode."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from core.cache.crypto import WrongKey
from core.cache.disk import DiskStore, PinnedReader, hash_stream
from core.cache.entry import CacheEntry, MemorySource, Source
from core.cache.errors import CacheIntegrityError, NotCacheable
from core.cache.memory import MemoryLRU
from core.cache.plain_index import PlainIndex
from core.cache.procdir import ProcessDir
from core.cache.settings import CacheSettings
from core.cache.singleflight import SingleFlight
from core.scratch import private_dir, run_spilling

log = logging.getLogger("dgfs.cache")

SHARED_DIR = "shared"
INDEX_NAME = "plain-index.sqlite3"
# With a disk tier, the memory tier holds only entries up to this fraction of its bound.
HOT_FRACTION = 8
DISK_RETRY_SECONDS = 60.0  # after a full disk, memory only for this long
_DEGRADE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
}
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CacheStats:
    """Counters since the cache was opened, and current sizes."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corruptions: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    entries: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class ContentCache:
    """The encrypted read cache, keyed by plaintext SHA-256. Thread-safe."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self._key = settings.key if settings.key is not None else os.urandom(32)
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._memory = MemoryLRU(settings.memory_limit_bytes)
        self._flights = SingleFlight()
        self._disk: DiskStore | None = None
        self._parked: DiskStore | None = None  # disk tier set aside after a full disk
        self._retry_at = 0.0
        self._closed = False
        base = settings.cache_dir
        try:
            self._procdir = ProcessDir(base)
        except OSError as exc:
            self._procdir = ProcessDir(None)
            if settings.backend == "filesystem":
                self._warn_degraded(exc)
            index_path = None
        else:
            index_path = self._open_disk(base)
        self._index = PlainIndex(index_path, self._key)

    @property
    def directory(self) -> Path | None:
        """Where entries live on disk, or None when memory-only."""
        disk = self._disk
        return disk.root if disk else None

    def lookup(self, sha256: str) -> CacheEntry | None:
        """A pinned entry for `sha256`, or None (a miss)."""
        entry = self._find(_check_sha(sha256))
        self._count("hits" if entry else "misses")
        return entry

    def insert_file(self, path: Path, sha256: str | None = None) -> CacheEntry:
        """Encrypt and store the plaintext file `path`; return a pinned entry.

        Raises CacheIntegrityError (nothing stored) if `sha256` is given and differs, and
        NotCacheable when only memory is available and the file exceeds its bound.
        """
        if sha256 is not None:
            sha256 = _check_sha(sha256)
        with open(path, "rb", buffering=0) as src:
            size = os.fstat(src.fileno()).st_size
            disk = self._disk_tier()
            if disk is None:
                return self._insert_memory(src, size, sha256)
            if sha256 is None:
                sha256, size = hash_stream(src)
                src.seek(0)
                existing = self._find(sha256)
            else:
                existing = self._find(sha256)
                if existing is not None:
                    actual, _ = hash_stream(src)
                    if actual != sha256:
                        existing.close()
                        raise CacheIntegrityError(f"{path} has SHA-256 {actual}, not {sha256}")
            if existing is not None:
                return existing
            return self._insert_disk(disk, src, size, sha256)

    def get_or_create(self, sha256: str, produce: Callable[[Path], None]) -> CacheEntry:
        """The entry for `sha256`; on a miss one caller runs produce(tmp_path) to write the
        plaintext, which is verified and stored, and concurrent callers share the result."""
        sha256 = _check_sha(sha256)
        entry = self.lookup(sha256)
        if entry is not None:
            return entry
        return self._flights.run(("sha", sha256), lambda: self._fill(sha256, produce))

    def get_or_create_plain(
        self, bucket: str, key: str, etag: str, produce: Callable[[Path], None]
    ) -> CacheEntry:
        """Like get_or_create for an object without a recorded SHA-256 (indexed by etag)."""
        sha256 = self._index.get(bucket, key, etag)
        entry = self._find(sha256) if sha256 else None
        self._count("hits" if entry else "misses")
        if entry is not None:
            return entry
        return self._flights.run(
            ("plain", bucket, key, etag), lambda: self._fill_plain(bucket, key, etag, produce)
        )

    def scratch_path(self) -> Path:
        """A fresh, empty file (0600) in this process's private temp dir (0700)."""
        path = self._procdir.tmp / f"scratch-{secrets.token_hex(8)}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        return path

    def stats(self) -> CacheStats:
        disk = self._disk
        with self._lock:
            stats = CacheStats(**asdict(self._stats))
        stats.evictions = self._memory.evictions + (disk.evictions if disk else 0)
        stats.memory_bytes = self._memory.bytes
        stats.disk_bytes = disk.bytes if disk else 0
        stats.entries = disk.count if disk else len(self._memory)
        return stats

    def clear(self) -> None:
        """Remove every entry that is not open."""
        self._memory.clear()
        disk = self._disk
        if disk is not None:
            disk.clear()
        self._index.clear()

    def close(self) -> None:
        """Close the index and remove this process's private (ephemeral) directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._index.close()
        with self._lock:
            disks = [d for d in (self._disk, self._parked) if d is not None]
            self._disk = self._parked = None
        for disk in disks:
            disk.close()
        self._procdir.close()

    def __enter__(self) -> ContentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_disk(self, base: Path) -> Path | None:
        if self.settings.backend != "filesystem":
            return None
        ephemeral = self.settings.key is None
        root = self._procdir.path if ephemeral else base / SHARED_DIR
        try:
            self._disk = DiskStore(
                root, self._procdir.tmp, self._key, self.settings.disk_limit_bytes
            )
        except OSError as exc:
            self._warn_degraded(exc)
            return None
        return root / INDEX_NAME

    def _find(self, sha256: str) -> CacheEntry | None:
        data = self._memory.get(sha256)
        if data is not None:
            return CacheEntry(sha256, MemorySource(data), self._corrupt)
        disk = self._disk_tier()
        if disk is None:
            return None
        try:
            reader = disk.open(sha256)
        except WrongKey:
            log.debug("cache entry %s was written under another key; treating as a miss", sha256)
            return None
        except CacheIntegrityError as exc:
            self._corrupt(sha256, None, exc)
            return None
        except OSError as exc:
            log.debug("cache entry %s unreadable (%s); treating as a miss", sha256, exc)
            return None
        if reader is None:
            return None
        entry = CacheEntry(sha256, reader, self._corrupt)
        if reader.size <= self._memory.limit // HOT_FRACTION:
            try:
                data = entry.read(0, reader.size)
            except CacheIntegrityError:
                entry.close()
                return None
            self._memory.put(sha256, data)
        return entry

    def _insert_disk(self, disk: DiskStore, src: BinaryIO, size: int, sha256: str) -> CacheEntry:
        hot: list[bytes] | None = [] if size <= self._memory.limit // HOT_FRACTION else None
        try:
            reader = disk.put(src, size, sha256, hot.append if hot is not None else None)
        except OSError as exc:
            if exc.errno not in _DEGRADE_ERRNOS:
                raise
            self._degrade(exc)
            src.seek(0)
            return self._insert_memory(src, size, sha256)
        if hot is not None:
            self._memory.put(sha256, b"".join(hot))
        return CacheEntry(sha256, reader, self._corrupt)

    def _insert_memory(self, src: BinaryIO, size: int, sha256: str | None) -> CacheEntry:
        if size > self._memory.limit:
            raise NotCacheable(size, self._memory.limit)
        data = src.read(self._memory.limit + 1)
        if len(data) > self._memory.limit:
            raise NotCacheable(len(data), self._memory.limit)
        actual = hashlib.sha256(data).hexdigest()
        if sha256 is not None and actual != sha256:
            raise CacheIntegrityError(f"content has SHA-256 {actual}, expected {sha256}")
        self._memory.put(actual, data)
        return CacheEntry(actual, MemorySource(data), self._corrupt)

    def _fill(self, sha256: str, produce: Callable[[Path], None]) -> CacheEntry:
        entry = self._find(sha256)
        if entry is not None:
            return entry
        return run_spilling(
            self._procdir.tmp, lambda base: self._produce_into(base, produce, sha256)
        )

    def _fill_plain(
        self, bucket: str, key: str, etag: str, produce: Callable[[Path], None]
    ) -> CacheEntry:
        sha256 = self._index.get(bucket, key, etag)
        entry = self._find(sha256) if sha256 else None
        if entry is not None:
            return entry
        entry = run_spilling(self._procdir.tmp, lambda base: self._produce_into(base, produce))
        self._index.put(bucket, key, etag, entry.sha256)
        return entry

    def _produce_into(
        self, base: Path, produce: Callable[[Path], None], sha256: str | None = None
    ) -> CacheEntry:
        """produce() a plaintext file in a private dir under `base`, then insert it (a full
        disk tier degrades to memory; a full `base` raises for run_spilling to try elsewhere)."""
        with private_dir(base) as tmp:
            path = tmp / "content"
            produce(path)
            return self.insert_file(path, sha256)

    def _corrupt(self, sha256: str, source: Source | None, exc: CacheIntegrityError) -> None:
        self._count("corruptions")
        self._memory.discard(sha256)
        disk = self._disk
        if disk is not None and isinstance(source, PinnedReader):
            disk.delete(sha256, source)
        log.warning("cache entry %s failed its integrity check (%s); deleted", sha256, exc)

    def _degrade(self, exc: OSError) -> None:
        """Set the disk tier aside (memory only) for DISK_RETRY_SECONDS; then try it again."""
        with self._lock:
            disk, self._disk = self._disk, None
            if disk is not None:
                self._parked, self._retry_at = disk, time.monotonic() + DISK_RETRY_SECONDS
        if disk is not None:
            self._warn_degraded(exc)

    def _disk_tier(self) -> DiskStore | None:
        """The disk tier, brought back once its retry time has come after a degrade."""
        if self._disk is None and self._parked is not None and time.monotonic() >= self._retry_at:
            with self._lock:
                if self._parked is not None and not self._closed:
                    self._disk, self._parked = self._parked, None
                    log.info("trying the cache directory again")
        return self._disk

    def _warn_degraded(self, exc: OSError) -> None:
        log.warning(
            "cache directory %s is unusable (%s); caching in memory only (up to %d bytes) for now",
            self.settings.cache_dir,
            exc.strerror or exc,
            self.settings.memory_limit_bytes,
        )

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)


def _check_sha(sha256: str) -> str:
    sha256 = sha256.lower()
    if not _SHA.match(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256
