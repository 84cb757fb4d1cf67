"""This process's private cache directory, and removal of those left by dead processes."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path

from core.proc import pid_alive

log = logging.getLogger("dgfs.cache")

PREFIX = "ephemeral-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")
_LOCK = ".owner.lock"


def make_private_dir(path: Path) -> None:
    """mkdir -p with mode 0700 for every directory it creates (and `path` itself)."""
    if not path.parent.is_dir():
        make_private_dir(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
        return
    os.chmod(path, 0o700)


class ProcessDir:
    """<base>/ephemeral-<pid>-<random>/ (or a system temp dir when base is None), holding tmp/.

    The owner holds an flock on it for its lifetime; it is removed at close() or exit.
    """

    def __init__(self, base: Path | None) -> None:
        if base is None:
            self.path = Path(tempfile.mkdtemp(prefix="dgfs-cache-"))
        else:
            make_private_dir(base)
            reap_leftovers(base)
            self.path = base / f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            make_private_dir(self.path)
        try:
            lock_fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.tmp = self.path / "tmp"
            make_private_dir(self.tmp)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid(), lock_fd)

    def close(self) -> None:
        """Remove the directory (idempotent)."""
        self._finalizer()


def _remove(path: Path, owner_pid: int, lock_fd: int) -> None:
    if os.getpid() != owner_pid:  # a forked child exiting must not remove its parent's dir
        return
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock_fd)


def reap_leftovers(base: Path) -> None:
    """Remove ephemeral dirs under `base` whose owner is dead (pid gone and lock free)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _NAME.match(name)
        if not match or pid_alive(int(match.group(1))) or _lock_held(base / name / _LOCK):
            continue
        shutil.rmtree(base / name, ignore_errors=True)
        log.info("removed leftover cache directory %s of dead process", base / name)


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
