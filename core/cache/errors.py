"""Errors raised by the read cache."""

from __future__ import annotations

from core.errors import DgError, IntegrityError


class CacheError(DgError):
    """Base of every error the cache raises on purpose."""


class CacheIntegrityError(CacheError, IntegrityError):
    """Cached bytes failed authentication or do not match their SHA-256."""


class NotCacheable(CacheError):
    """The entry cannot be cached (memory-only cache and larger than its bound): stream it."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"entry of {size} bytes exceeds the memory cache bound of {limit} bytes")
        self.size = size
        self.limit = limit


class CacheConfigError(CacheError, ValueError):
    """A cache setting (usually from the environment) is invalid."""
