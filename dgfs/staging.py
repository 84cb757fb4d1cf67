"""Staging files for writes, kept so that a crashed daemon's unfinished uploads are recovered.

Layout: `<cache base>/staging/<pid>-<id>/` (0700, flock-held by its daemon) holds one staging
file per written file (0600) and, while that file is dirty, a sidecar `<name>.json` naming the
endpoint, bucket, key, attributes and the object the staged content replaces (its stored key
and ETag, or none for a new file). A later writable mount of any bucket finds directories whose
owner is gone: their dirty files are uploaded to the key they were meant for (if that endpoint
and bucket are the ones being mounted) only while that key still holds the object they were
based on (conditional PUT); otherwise under `<key>.dgfs-recovered-<stamp>`. Files of other
buckets are moved to `<cache base>/recovery/` and reported — never silently dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from core.cache.procdir import make_private_dir
from core.errors import PreconditionFailed
from core.layout import PosixAttrs

log = logging.getLogger("dgfs.staging")

LOCK_NAME = ".owner.lock"
SIDECAR = ".json"
RECOVERED_INFIX = ".dgfs-recovered-"

Base = tuple[str, str] | None  # (stored key, ETag) a staged file replaces; None: a new file
# upload(path, key, attrs, base): store only while `key` is still `base`, else PreconditionFailed
Upload = Callable[[Path, str, PosixAttrs, Base], object]


class StagingArea:
    """This daemon's staging directory."""

    def __init__(self, base: Path, bucket: str, endpoint: str) -> None:
        self.base = base
        self.bucket = bucket
        self.endpoint = endpoint
        make_private_dir(base / "staging")
        self.path = base / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        make_private_dir(self.path)
        self._lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def new_file(self) -> tuple[Path, int]:
        """A new empty staging file (0600) and an O_RDWR fd on it."""
        path = self.path / uuid.uuid4().hex
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def mark_dirty(
        self, path: Path, key: str, attrs: PosixAttrs, base: Base, durable: bool = False
    ) -> None:
        """Record where a dirty staging file belongs and what it replaces (atomic write of its
        sidecar; `durable`: fsynced, and the directory too, before returning)."""
        sidecar = path.with_name(path.name + SIDECAR)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        info = {"endpoint": self.endpoint, "bucket": self.bucket, "key": key}
        info.update(attrs=asdict(attrs), base=list(base) if base else None)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(info).encode())
            os.fchmod(fd, 0o600)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(sidecar)
        if durable:
            self._sync_dir()

    def make_durable(self, path: Path, fd: int, key: str, attrs: PosixAttrs, base: Base) -> None:
        """Async write-back at close(): the staged content and its sidecar (both names
        included) survive a crash, so the next mount's recovery finds them."""
        os.fsync(fd)
        self.mark_dirty(path, key, attrs, base, durable=True)

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mark_clean(self, path: Path) -> None:
        path.with_name(path.name + SIDECAR).unlink(missing_ok=True)

    def remove(self, path: Path) -> None:
        self.mark_clean(path)
        path.unlink(missing_ok=True)

    def close(self, keep: bool) -> None:
        """Remove the directory unless dirty files remain (`keep`), then release the lock."""
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def _claim(directory: Path) -> int | None:
    """An fd holding the directory's owner lock if its daemon is gone, else None."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _orphaned(base: Path) -> Iterator[tuple[Path, int]]:
    """Staging directories of dead daemons, each with its owner lock held while in use."""
    root = base / "staging"
    if not root.is_dir():
        return
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        fd = _claim(directory)
        if fd is None:
            continue
        try:
            yield directory, fd
        finally:
            os.close(fd)


def orphaned_count(base: Path) -> int:
    """How many dirty staged files dead daemons left (a read-only mount leaves them)."""
    return sum(len(list(d.glob("*" + SIDECAR))) for d, _ in _orphaned(base))


def recover(base: Path, bucket: str, endpoint: str, upload: Upload) -> list[str]:
    """Upload (or park in recovery/) dirty files left by dead daemons; returns report lines.

    `upload` stores one file conditionally (see `Upload`); on PreconditionFailed the file is
    stored under a recovered name; any other exception leaves it in recovery/.
    """
    report = []
    for directory, _ in _orphaned(base):
        for sidecar in sorted(directory.glob("*" + SIDECAR)):
            data_file = sidecar.with_name(sidecar.name[: -len(SIDECAR)])
            report.append(_recover_one(base, (endpoint, bucket), data_file, sidecar, upload))
        shutil.rmtree(directory, ignore_errors=True)
    return report


def _recover_one(
    base: Path, where: tuple[str, str], data_file: Path, sidecar: Path, upload: Upload
) -> str:
    endpoint, bucket = where
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return _park(base, data_file, sidecar, f"unreadable sidecar ({exc})")
    if not data_file.exists():
        return f"lost staging file for {info.get('key')} (sidecar without data)"
    if info.get("bucket") != bucket or info.get("endpoint", endpoint) != endpoint:
        owner = f"{info.get('endpoint', '?')} bucket {info.get('bucket')!r}"
        return _park(base, data_file, sidecar, f"belongs to {owner}")
    try:
        return _upload_recovered(data_file, info, f"s3://{bucket}/", upload)
    except Exception as exc:
        return _park(base, data_file, sidecar, f"upload failed: {exc}")


def _upload_recovered(data_file: Path, info: dict, where: str, upload: Upload) -> str:
    """Store one staged file where it belongs if that is unchanged, else beside it."""
    key, attrs = info["key"], PosixAttrs(**info.get("attrs", {}))
    base = info.get("base", "unknown")
    if base != "unknown" and (base is None or base[1]):  # an ETag to check against
        try:
            upload(data_file, key, attrs, tuple(base) if base else None)
            log.warning("recovered unfinished upload of %s from a previous daemon", key)
            return f"recovered {where}{key}"
        except PreconditionFailed:
            pass
    kept = f"{key}{RECOVERED_INFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    upload(data_file, kept, attrs, None)
    line = f"{where}{key} changed since a previous daemon staged it: its data is kept as {kept}"
    log.warning("%s", line)
    return line


def _park(base: Path, data_file: Path, sidecar: Path, why: str) -> str:
    recovery = base / "recovery"
    make_private_dir(recovery)
    for path in (data_file, sidecar):
        if path.exists():
            shutil.move(str(path), recovery / path.name)
    line = f"kept {recovery / data_file.name} ({why}); see {recovery / sidecar.name}"
    log.warning("%s", line)
    return line
