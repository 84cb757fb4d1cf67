"""The content-addressed store of encrypted entries: <root>/objects/ab/cd/<sha256>.

Writes go to a private temp file renamed into place, so readers (in any process) see a whole
entry or none, and two writers of one entry both leave it intact. Nothing is fsynced: a cache
is not the data's home, and an entry torn by a crash fails its authentication tag or length
check when read, which counts as a corruption and a miss (the content is fetched again).
The size bound is kept by LRU eviction on file mtime (touched on every hit), which every
process sharing the directory sees; entries pinned by this process are never evicted, and an
entry another process evicts stays readable through the descriptor its reader holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.cache.crypto import ChunkReader, encrypt_stream, key_id
from core.cache.errors import CacheIntegrityError
from core.cache.procdir import make_private_dir

log = logging.getLogger("dgfs.cache")

LOW_WATER = 0.9
_SHA = re.compile(r"^[0-9a-f]{64}$")
_BUFFER = 2**20


class DiskStore:
    """Encrypted CAS under `root`, staging writes in `tmp_dir` (same filesystem), `limit` bytes."""

    def __init__(self, root: Path, tmp_dir: Path, key: bytes, limit: int) -> None:
        self.root = root
        self.objects = root / "objects"
        make_private_dir(self.objects)
        self._tmp = tmp_dir
        self._aead = AESGCM(key)
        self._kid = key_id(key)
        self.limit = limit
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self._pins: dict[str, int] = {}
        self._lock_fd = os.open(root / "evict.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.evictions = 0
        self._since_scan = 0
        self.bytes, self.count = self._totals(self._scan())

    def path_for(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:4] / sha256

    def open(self, sha256: str) -> PinnedReader | None:
        """A pinned reader of the entry, or None if absent. Raises WrongKey or
        CacheIntegrityError (the caller deletes the entry)."""
        path = self.path_for(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            reader = ChunkReader(fd, self._aead, self._kid, sha256)
        except CacheIntegrityError:
            self._unlink_if_same(path, fd)
            os.close(fd)
            raise
        except BaseException:
            os.close(fd)
            raise
        self.pin(sha256)
        try:
            os.utime(fd)
        except OSError:
            pass
        return PinnedReader(reader, self)

    def put(
        self,
        src: BinaryIO,
        size: int,
        sha256: str,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> PinnedReader:
        """Encrypt `size` bytes of `src` as entry `sha256` and return a pinned reader of it.

        Raises CacheIntegrityError (nothing stored) if the plaintext's SHA-256 differs, and
        OSError if the directory cannot be written. An entry larger than the whole bound is
        kept only while open (its file is unlinked at once).
        """
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="entry-")
        reader = None
        try:
            with open(fd, "wb", buffering=_BUFFER, closefd=False) as dst:
                actual = encrypt_stream(self._aead, self._kid, sha256, size, src, dst, on_chunk)
            if actual != sha256:
                raise CacheIntegrityError(f"content has SHA-256 {actual}, expected {sha256}")
            reader = ChunkReader(
                os.open(tmp, os.O_RDONLY | os.O_CLOEXEC), self._aead, self._kid, sha256
            )
            self.pin(sha256)
            file_size = reader.header.file_size
            if file_size > self.limit:
                os.unlink(tmp)
                return PinnedReader(reader, self)
            path = self.path_for(sha256)
            make_private_dir(path.parent)
            os.replace(tmp, path)
        except BaseException:
            if reader is not None:
                self.unpin(sha256)
                reader.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        finally:
            os.close(fd)
        with self._lock:
            self.bytes += file_size
            self.count += 1
            self._since_scan += file_size
        self.evict_if_needed()
        return PinnedReader(reader, self)

    def pin(self, sha256: str) -> None:
        with self._lock:
            self._pins[sha256] = self._pins.get(sha256, 0) + 1

    def unpin(self, sha256: str) -> None:
        with self._lock:
            left = self._pins.get(sha256, 0) - 1
            if left > 0:
                self._pins[sha256] = left
            else:
                self._pins.pop(sha256, None)

    def pinned(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._pins

    def delete(self, sha256: str, reader: PinnedReader) -> None:
        """Remove the entry if its file is still the one `reader` reads."""
        self._unlink_if_same(self.path_for(sha256), reader.fd)

    @staticmethod
    def _unlink_if_same(path: Path, fd: int) -> None:
        try:
            st = os.fstat(fd)
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
        except OSError:
            pass

    def evict_if_needed(self) -> None:
        """Evict least recently used unpinned entries down to LOW_WATER of the bound when the
        estimate is over it, or after enough writes that other processes' may have added up."""
        with self._lock:
            due = self.bytes > self.limit or self._since_scan >= self.limit // 8
        if due:
            self.evict(int(self.limit * LOW_WATER), only_if_over=self.limit)

    def evict(self, target: int, only_if_over: int = -1) -> None:
        """Scan the store and unlink unpinned entries, oldest first, until <= `target` bytes."""
        if not self._evicting.acquire(blocking=False):
            return
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is evicting
            try:
                entries = self._scan()
                total, count = self._totals(entries)
                if total > only_if_over:
                    for _mtime, size, sha, path in sorted(entries):
                        if total <= target:
                            break
                        if self.pinned(sha):
                            continue
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                        total -= size
                        count -= 1
                        self.evictions += 1
                with self._lock:
                    self.bytes, self.count, self._since_scan = total, count, 0
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._evicting.release()

    def clear(self) -> None:
        """Remove every entry this process has not pinned."""
        self.evict(-1)

    def close(self) -> None:
        os.close(self._lock_fd)

    def _scan(self) -> list[tuple[int, int, str, Path]]:
        found = []
        for top in _subdirs(self.objects):
            for sub in _subdirs(top):
                try:
                    with os.scandir(sub) as it:
                        for item in it:
                            if _SHA.match(item.name):
                                try:
                                    st = item.stat(follow_symlinks=False)
                                except FileNotFoundError:
                                    continue
                                found.append((st.st_mtime_ns, st.st_size, item.name, Path(item)))
                except FileNotFoundError:
                    continue
        return found

    @staticmethod
    def _totals(entries: list[tuple[int, int, str, Path]]) -> tuple[int, int]:
        return sum(e[1] for e in entries), len(entries)


class PinnedReader:
    """A ChunkReader that keeps its entry pinned in the store until closed."""

    def __init__(self, reader: ChunkReader, store: DiskStore) -> None:
        self.reader = reader
        self.store = store
        self.size = reader.size
        self.fd = reader.fd

    def read(self, offset: int, size: int) -> bytes:
        return self.reader.read(offset, size)

    def iter_plaintext(self) -> Iterator[bytes]:
        return self.reader.iter_plaintext()

    def duplicate(self) -> PinnedReader:
        other = PinnedReader(self.reader.duplicate(), self.store)
        self.store.pin(self.reader.header.sha256)
        return other

    def close(self) -> None:
        self.reader.close()
        self.store.unpin(self.reader.header.sha256)


def hash_stream(src: BinaryIO) -> tuple[str, int]:
    """SHA-256 and length of what remains in `src`."""
    digest = hashlib.sha256()
    size = 0
    while block := src.read(_BUFFER):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e) for e in it if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
