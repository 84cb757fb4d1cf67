"""The one place that builds the core parts from resolved settings: object store, read cache,
delta store. The mount and every CLI command open their store here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.cache import CacheSettings, ContentCache
from core.config import DeltaSettings, S3Settings
from core.deltastore import DeltaStore
from core.objectstore import ObjectStore


@dataclass(frozen=True)
class StoreConfig:
    """Everything core needs to serve one bucket. `cache` None: no read cache."""

    bucket: str
    s3: S3Settings
    delta: DeltaSettings
    cache: CacheSettings | None = None


@contextmanager
def open_store(
    cfg: StoreConfig,
    workdir: Path | None = None,
    check_bucket: bool = True,
    conditional_put: bool = True,
) -> Iterator[DeltaStore]:
    """A DeltaStore over `cfg` (the bucket checked first unless told not to), its cache and
    work directory closed afterwards. `conditional_put` False: the server does not honour
    If-None-Match (core/capabilities.py), creates fall back to create-then-verify."""
    objects = ObjectStore(cfg.bucket, cfg.s3)
    objects.conditional_put = conditional_put
    if check_bucket:
        objects.check_bucket()
    cache = ContentCache(cfg.cache) if cfg.cache is not None else None
    store = DeltaStore(objects, cfg.delta, cache, workdir=workdir)
    try:
        yield store
    finally:
        store.close()
        if cache is not None:
            cache.close()
