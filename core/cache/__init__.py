"""The encrypted read cache: content-addressed entries keyed by plaintext SHA-256.

A byte-bounded memory LRU sits in front of an on-disk store whose entries are AES-256-GCM
encrypted in 64 KiB chunks, so reads decrypt only what they touch. Nothing here knows FUSE/S3.
"""

from core.cache.content_cache import CacheStats, ContentCache
from core.cache.entry import CacheEntry
from core.cache.errors import CacheConfigError, CacheError, CacheIntegrityError, NotCacheable
from core.cache.settings import CacheSettings

__all__ = [
    "CacheConfigError",
    "CacheEntry",
    "CacheError",
    "CacheIntegrityError",
    "CacheSettings",
    "CacheStats",
    "ContentCache",
    "NotCacheable",
]
