"""Mount options shared by the CLI, `-o` strings and fstab helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WRITE_BACK_MODES = ("sync", "async")


def default_upload_workers() -> int:
    """Concurrent background uploads in async mode: one per CPU, at least 2."""
    return max(2, os.cpu_count() or 1)


def write_back_mode(value: str | None, env: dict | None = None) -> str:
    """`--write-back`, else `DG_WRITE_BACK`, else "sync"; ValueError for anything else."""
    env = os.environ if env is None else env
    text = value if value is not None else env.get("DG_WRITE_BACK", "sync")
    mode = (text or "sync").strip().lower()
    if mode not in WRITE_BACK_MODES:
        raise ValueError(f"write-back mode {text!r}: use sync or async")
    return mode


@dataclass
class FsOptions:
    """What the filesystem layer needs to know (everything else is core's business).

    `cache_base`: the resolved cache directory (CacheSettings.cache_dir), which also holds
    staging and the metadata database."""

    cache_base: Path
    prefix: str = ""
    read_only: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    metadata_ttl: float = 5.0
    rename_dir_limit: int = 1000
    max_threads: int = 16
    retry_interval: float = 10.0
    temp_upload_delay: float = 5.0
    exclude: tuple[str, ...] = ()
    dir_index: bool = True
    suid: bool = False  # trust setuid/setgid/sticky bits from other tools' `mode` metadata
    dev: bool = False  # show device, FIFO and socket types from metadata (else regular files)
    write_back: str = "sync"  # "async": close() returns once staged durably (docs/SEMANTICS.md)
    upload_workers: int = field(default_factory=default_upload_workers)


def parse_source(source: str) -> tuple[str, str]:
    """`BUCKET[/PREFIX]` or `s3://BUCKET/PREFIX` → (bucket, prefix without slashes at ends)."""
    text = source[5:] if source.startswith("s3://") else source
    bucket, _, prefix = text.partition("/")
    if not bucket:
        raise ValueError(f"{source!r}: no bucket name")
    return bucket, prefix.strip("/")
