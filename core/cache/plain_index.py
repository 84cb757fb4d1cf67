"""(bucket, key, etag) -> content SHA-256 for objects stored without a recorded SHA-256.

Rows are keyed by an HMAC of the triple under the cache key, so this index holds no object
names and a process with another key simply misses. (The metadata cache, core/metadata.py,
does keep names in plain text in the same private cache dir.) SQLite (WAL) makes it safe to
share.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger("dgfs.cache")

MAX_ROWS = 100_000
_PRUNE_EVERY = 1000
_SCHEMA = "CREATE TABLE IF NOT EXISTS plain (ref BLOB PRIMARY KEY, sha256 TEXT NOT NULL, used REAL)"


class PlainIndex:
    """A small persistent map; `path=None` keeps it in memory. Errors degrade to misses."""

    def __init__(self, path: Path | None, key: bytes) -> None:
        self._key = hmac.new(key, b"dgfs cache plain index v1", hashlib.sha256).digest()
        self._lock = threading.Lock()
        self._puts = 0
        self._db = self._open(path)

    def get(self, bucket: str, key: str, etag: str) -> str | None:
        """The recorded SHA-256 of this object version, or None."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT sha256 FROM plain WHERE ref = ?", (self._ref(bucket, key, etag),)
                ).fetchone()
        except sqlite3.Error as exc:
            log.debug("plain index read failed: %s", exc)
            return None
        return row[0] if row else None

    def put(self, bucket: str, key: str, etag: str, sha256: str) -> None:
        """Record the SHA-256 of this object version (best effort)."""
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO plain VALUES (?, ?, ?)",
                    (self._ref(bucket, key, etag), sha256, time.time()),
                )
                self._puts += 1
                if self._puts % _PRUNE_EVERY == 0:
                    self._db.execute(
                        "DELETE FROM plain WHERE ref NOT IN "
                        "(SELECT ref FROM plain ORDER BY used DESC LIMIT ?)",
                        (MAX_ROWS,),
                    )
        except sqlite3.Error as exc:
            log.debug("plain index write failed: %s", exc)

    def clear(self) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM plain")
        except sqlite3.Error as exc:
            log.debug("plain index clear failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _ref(self, bucket: str, key: str, etag: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (bucket, key, etag.strip('"')):
            data = part.encode("utf-8", "surrogateescape")
            mac.update(struct.pack(">Q", len(data)) + data)
        return mac.digest()

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is not None:
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
                db = sqlite3.connect(
                    path, timeout=10, check_same_thread=False, isolation_level=None
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
                return db
            except (OSError, sqlite3.Error) as exc:
                log.warning("plain index %s unusable (%s); keeping it in memory", path, exc)
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.execute(_SCHEMA)
        return db
