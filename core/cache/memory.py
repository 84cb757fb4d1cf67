"""A byte-bounded, thread-safe LRU of decrypted entries (sha256 -> plaintext)."""

from __future__ import annotations

import threading
from collections import OrderedDict


class MemoryLRU:
    """Holds at most `limit` bytes of plaintext; an entry larger than `limit` is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, sha256: str) -> bytes | None:
        """The plaintext of `sha256`, marking it most recently used; None if absent."""
        with self._lock:
            data = self._items.get(sha256)
            if data is not None:
                self._items.move_to_end(sha256)
            return data

    def put(self, sha256: str, data: bytes) -> bool:
        """Admit `data`, evicting least recently used entries; False if it exceeds the bound."""
        if len(data) > self.limit:
            return False
        with self._lock:
            old = self._items.pop(sha256, None)
            if old is not None:
                self._bytes -= len(old)
            while self._items and self._bytes + len(data) > self.limit:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)
                self.evictions += 1
            self._items[sha256] = data
            self._bytes += len(data)
        return True

    def discard(self, sha256: str) -> None:
        with self._lock:
            data = self._items.pop(sha256, None)
            if data is not None:
                self._bytes -= len(data)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._items
