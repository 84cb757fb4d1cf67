"""Reconstruct stored files and check their SHA-256 (deltas against their reference)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core import layout
from core.deltastore import DeltaStore
from core.errors import DgError, NotFound
from core.layout import Kind, ObjectRecord
from core.metadata import RecordCache

DEFAULT_JOBS = 4


@dataclass
class VerifyReport:
    """Outcome per logical file: ok, failed (key → message), unchecked (plain, no SHA-256)."""

    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return len(self.ok) + len(self.failed) + len(self.unchecked)

    def to_json(self) -> dict:
        return {
            "checked": self.checked,
            "ok": len(self.ok),
            "failed": [{"key": k, "error": v} for k, v in sorted(self.failed.items())],
            "unchecked": sorted(self.unchecked),
        }


def targets(store: DeltaStore, path: str) -> list[ObjectRecord]:
    """The records to verify: the one file `path` names, else everything under prefix `path`."""
    path = path.strip("/")
    if path:
        try:
            return [store.stat(path)]
        except NotFound:
            pass
    base = f"{path}/" if path else ""
    objects = [
        o
        for page in store.store.list_pages(base, delimiter=None)
        for o in page.objects
        if not o.key.endswith("/") and not layout.is_hidden_key(o.key)
    ]
    cache = RecordCache(store)
    try:
        return [r for r in cache.resolve(objects) if r is not None]
    finally:
        cache.close()


def verify(
    store: DeltaStore,
    records: list[ObjectRecord],
    jobs: int = DEFAULT_JOBS,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Reconstruct each record into a temp file with `jobs` threads; never raises per file.

    `progress(n)` is called after each file with the number done so far.
    """
    report = VerifyReport()
    with (
        tempfile.TemporaryDirectory(dir=store.workdir) as tmp,
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
    ):
        results = pool.map(lambda r: (r, _check(store, r, Path(tmp))), records)
        for done, (record, error) in enumerate(results, 1):
            if error is not None:
                report.failed[record.logical_key] = error
            elif record.kind == Kind.PLAIN:
                report.unchecked.append(record.logical_key)
            else:
                report.ok.append(record.logical_key)
            if progress:
                progress(done)
    return report


def _check(store: DeltaStore, record: ObjectRecord, tmp: Path) -> str | None:
    """None if `record` reconstructs with the right SHA-256, else a message naming its key."""
    fd, name = tempfile.mkstemp(dir=tmp)
    os.close(fd)
    out = Path(name)
    try:
        store.reader.reconstruct(record, out)
    except (DgError, OSError) as exc:
        message = str(exc)
        return message if record.stored_key in message else f"{record.stored_key}: {message}"
    finally:
        out.unlink(missing_ok=True)
    return None
