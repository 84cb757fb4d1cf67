"""Staging files for writes, kept so that a crashed daemon's unfinished uploads are recovered.

Layout: `<cache base>/staging/<pid>-<id>/` (0700, flock-held by its daemon) holds one staging
file per written file (0600) and, while that file is dirty, a sidecar `<name>.json` naming the
bucket, key and attributes. A later mount of any bucket finds directories whose owner is gone:
their dirty files are uploaded to the key they were meant for (if that bucket is the one being
mounted) or moved to `<cache base>/recovery/` and reported — never silently dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from core.cache.procdir import make_private_dir
from core.layout import PosixAttrs

log = logging.getLogger("dgfs.staging")

LOCK_NAME = ".owner.lock"
SIDECAR = ".json"


class StagingArea:
    """This daemon's staging directory."""

    def __init__(self, base: Path, bucket: str) -> None:
        self.base = base
        self.bucket = bucket
        make_private_dir(base / "staging")
        self.path = base / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        make_private_dir(self.path)
        self._lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def new_file(self) -> tuple[Path, int]:
        """A new empty staging file (0600) and an O_RDWR fd on it."""
        path = self.path / uuid.uuid4().hex
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def mark_dirty(self, path: Path, key: str, attrs: PosixAttrs) -> None:
        """Record where a dirty staging file belongs (atomic write of its sidecar)."""
        sidecar = path.with_name(path.name + SIDECAR)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps({"bucket": self.bucket, "key": key, "attrs": asdict(attrs)}))
        os.chmod(tmp, 0o600)
        tmp.replace(sidecar)

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


def _owner_gone(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def recover(base: Path, bucket: str, upload) -> list[str]:
    """Upload (or park in recovery/) dirty files left by dead daemons; returns report lines.

    `upload(path, key, attrs)` stores one file; an exception leaves the file in recovery/.
    """
    root = base / "staging"
    if not root.is_dir():
        return []
    report = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _owner_gone(directory):
            continue
        for sidecar in sorted(directory.glob("*" + SIDECAR)):
            data_file = sidecar.with_name(sidecar.name[: -len(SIDECAR)])
            report.append(_recover_one(base, bucket, data_file, sidecar, upload))
        shutil.rmtree(directory, ignore_errors=True)
    return report


def _recover_one(base: Path, bucket: str, data_file: Path, sidecar: Path, upload) -> str:
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return _park(base, data_file, sidecar, f"unreadable sidecar ({exc})")
    if not data_file.exists():
        return f"lost staging file for {info.get('key')} (sidecar without data)"
    if info.get("bucket") != bucket:
        return _park(base, data_file, sidecar, f"belongs to bucket {info.get('bucket')!r}")
    try:
        upload(data_file, info["key"], PosixAttrs(**info.get("attrs", {})))
    except Exception as exc:
        return _park(base, data_file, sidecar, f"upload failed: {exc}")
    log.warning("recovered unfinished upload of %s from a previous daemon", info["key"])
    return f"recovered s3://{bucket}/{info['key']}"


def _park(base: Path, data_file: Path, sidecar: Path, why: str) -> str:
    recovery = base / "recovery"
    make_private_dir(recovery)
    for path in (data_file, sidecar):
        if path.exists():
            shutil.move(str(path), recovery / path.name)
    line = f"kept {recovery / data_file.name} ({why}); see {recovery / sidecar.name}"
    log.warning("%s", line)
    return line
