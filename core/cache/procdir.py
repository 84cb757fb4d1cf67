"""This process's private cache directory, and removal of those left by dead processes."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import weakref
from pathlib import Path

from core.proc import pid_alive

log = logging.getLogger("dgfs.cache")

PREFIX = "ephemeral-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")
_LOCK = ".owner.lock"


class UnsafeDirectory(PermissionError):
    """A private directory that exists but is a symlink or belongs to another user."""


def make_private_dir(path: Path) -> None:
    """mkdir -p with mode 0700 for every directory it creates (and `path` itself).

    An existing `path` must be a real directory owned by us: a group/world-accessible one is
    made 0700; a symlink or another user's directory raises UnsafeDirectory.
    """
    if not path.parent.is_dir():
        make_private_dir(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        check_private_dir(path)
        return
    os.chmod(path, 0o700)


def check_private_dir(path: Path) -> None:
    """Make sure the existing `path` is a directory only we can use (see make_private_dir)."""
    if path.is_symlink():
        raise UnsafeDirectory(f"{path} is a symlink; refusing to use it as a private directory")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeDirectory(
                f"{path} belongs to uid {st.st_uid}, not {os.geteuid()}; refusing to use it"
            )
        if st.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(f"{path} is a shared (sticky) directory; use a subdirectory")
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("%s was mode %04o; made it 0700", path, stat.S_IMODE(st.st_mode))
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


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
