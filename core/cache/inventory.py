"""What a cache directory holds on disk, counted without its key (`dgfs cache info|clear`).

Layout (core/cache/content_cache.py, disk.py, procdir.py): `<base>/shared/objects/ab/cd/<sha256>`
for the shared store, `<base>/ephemeral-<pid>-<random>/objects/…` for a process's own cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from core.cache.content_cache import SHARED_DIR
from core.cache.procdir import PREFIX, reap_leftovers

_SHA = re.compile(r"^[0-9a-f]{64}$")
_PROCESS_DIR = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[0-9a-f]+$")


def shared_objects(base: Path) -> Path:
    """The entry tree of the shared (keyed) store under a cache directory."""
    return base / SHARED_DIR / "objects"


def entry_files(objects: Path) -> Iterator[Path]:
    """Every entry file of one store (`objects/ab/cd/<sha256>`)."""
    return (p for p in objects.glob("*/*/*") if _SHA.match(p.name))


def count_entries(objects: Path) -> tuple[int, int]:
    """Entry count and bytes of one store."""
    count = size = 0
    for path in entry_files(objects):
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            continue
        count += 1
    return count, size


def process_caches(base: Path) -> list[dict]:
    """Ephemeral caches of dgfs processes (their key dies with them): pid, entries, bytes."""
    found = []
    for path in sorted(base.glob(f"{PREFIX}*")):
        match = _PROCESS_DIR.match(path.name)
        if match:
            count, size = count_entries(path / "objects")
            found.append({"pid": int(match.group(1)), "entries": count, "bytes": size})
    return found


def remove_unkeyed(base: Path) -> None:
    """Without the key: delete the shared store's entry files and dead processes' caches."""
    for path in entry_files(shared_objects(base)):
        path.unlink(missing_ok=True)
    reap_leftovers(base)
