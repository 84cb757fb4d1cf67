"""Real FUSE mounts for tests: `dgfs mount` as a user runs it, always unmounted afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DGFS = [sys.executable, "-m", "dgfs.cli"]


@dataclass
class Mount:
    """A mounted bucket: where it is, its log, and how it was started."""

    path: Path
    bucket: str
    log: Path
    args: list[str]

    def umount(self, lazy: bool = False) -> subprocess.CompletedProcess:
        args = [*DGFS, "umount", str(self.path), *(["--lazy"] if lazy else [])]
        return subprocess.run(args, capture_output=True, text=True, timeout=300)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def mount(bucket: str, where: Path, cache_dir: Path, *extra: str, check: bool = True) -> Mount:
    """Mount `bucket` on `where` (created) with the CLI; raises with the log if it fails."""
    where.mkdir(parents=True, exist_ok=True)
    log = where.parent / f"{where.name}.log"
    args = [
        bucket,
        str(where),
        "--log-file",
        str(log),
        "--cache-dir",
        str(cache_dir),
        "--metadata-ttl",
        "1",
        "--log-level",
        "DEBUG",
        *extra,
    ]
    proc = subprocess.run([*DGFS, "mount", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        text = log.read_text() if log.exists() else ""
        raise RuntimeError(f"mount failed: {proc.stderr.strip()}\n{text}")
    return Mount(where, bucket, log, args)


def force_unmount(path: Path) -> None:
    """Last resort in teardown: lazy unmount, ignoring errors."""
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def mount_status(mountpoint: Path) -> dict:
    """`dgfs status MOUNTPOINT --json` of a running mount (its S3 request counts, uploads…)."""
    out = subprocess.run(
        [sys.executable, "-m", "dgfs.cli", "status", str(mountpoint), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def xattr_value(path: Path, name: str) -> str | None:
    """`getfattr --only-values -n NAME PATH` as text; None when the attribute is absent."""
    proc = subprocess.run(
        ["getfattr", "--only-values", "-n", name, str(path)], capture_output=True, text=True
    )
    return proc.stdout if proc.returncode == 0 else None
