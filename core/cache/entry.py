"""CacheEntry: a pinned, open cache entry read by offset, over memory or an encrypted file."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from core.cache.errors import CacheIntegrityError


class Source(Protocol):
    """Where an entry's plaintext comes from."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...
    def iter_plaintext(self) -> Iterator[bytes]: ...
    def duplicate(self) -> Source: ...
    def close(self) -> None: ...


class MemorySource:
    """Plaintext held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0:
            return b""
        return self.data[offset : offset + size]

    def iter_plaintext(self, block: int = 2**20) -> Iterator[bytes]:
        view = memoryview(self.data)
        for offset in range(0, self.size, block):
            yield view[offset : offset + block]

    def duplicate(self) -> MemorySource:
        return self

    def close(self) -> None:
        pass


OnCorrupt = Callable[[str, Source, CacheIntegrityError], None]


class CacheEntry:
    """A pinned, open entry; a context manager. Thread-safe: close waits for running reads."""

    def __init__(self, sha256: str, source: Source, on_corrupt: OnCorrupt) -> None:
        self.sha256 = sha256
        self.size = source.size
        self._source = source
        self._on_corrupt = on_corrupt
        self._lock = threading.Lock()
        self._active = 0
        self._closed = False

    def read(self, offset: int, size: int) -> bytes:
        """Plaintext [offset, offset+size), short at EOF. Raises CacheIntegrityError (after the
        entry is deleted) if the stored bytes fail authentication."""
        source = self._acquire()
        try:
            return source.read(offset, size)
        except CacheIntegrityError as exc:
            self._on_corrupt(self.sha256, source, exc)
            raise
        finally:
            self._release()

    def copy_to(self, path: Path) -> None:
        """Write the whole plaintext to `path` (mode 0600), verifying its SHA-256 as it goes."""
        source = self._acquire()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                with open(fd, "wb", closefd=False) as dst:
                    digest = hashlib.sha256()
                    for block in source.iter_plaintext():
                        digest.update(block)
                        dst.write(block)
                if digest.hexdigest() != self.sha256:
                    raise CacheIntegrityError(
                        f"cache entry {self.sha256} has SHA-256 {digest.hexdigest()}"
                    )
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)
        except CacheIntegrityError as exc:
            self._on_corrupt(self.sha256, source, exc)
            raise
        finally:
            self._release()

    def duplicate(self) -> CacheEntry:
        """An independent handle on the same entry, pinned until it is closed."""
        source = self._acquire()
        try:
            return CacheEntry(self.sha256, source.duplicate(), self._on_corrupt)
        finally:
            self._release()

    def close(self) -> None:
        """Unpin the entry and release its file; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._active == 0
        if idle:
            self._source.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> CacheEntry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheEntry(sha256={self.sha256!r}, size={self.size}, closed={self._closed})"

    def _acquire(self) -> Source:
        with self._lock:
            if self._closed:
                raise ValueError("read from a closed cache entry")
            self._active += 1
        return self._source

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            last = self._closed and self._active == 0
        if last:
            self._source.close()
