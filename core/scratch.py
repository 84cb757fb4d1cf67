"""Temporary work files, and where they go when their disk is full.

Reads must keep working while the cache/staging disk is full (a big file being written can
fill it): a reconstruction that runs out of space there is redone in a spill directory on
another filesystem ($TMPDIR or /tmp, then /dev/shm), in a private 0700 subdirectory.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from core.errors import NoSpace

log = logging.getLogger("dgfs.scratch")

T = TypeVar("T")
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` means a local disk (or quota) is full."""
    if isinstance(exc, NoSpace):
        return True
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def spill_dirs(primary: Path) -> list[Path]:
    """Writable directories on other filesystems than `primary`, best first."""
    try:
        primary_dev = os.stat(primary).st_dev
    except OSError:
        primary_dev = None
    found: list[Path] = []
    seen = {primary_dev}
    for candidate in (Path(tempfile.gettempdir()), Path("/dev/shm")):
        try:
            dev = os.stat(candidate).st_dev
        except OSError:
            continue
        if dev not in seen and os.access(candidate, os.W_OK | os.X_OK):
            seen.add(dev)
            found.append(candidate)
    return found


@contextmanager
def private_dir(base: Path) -> Iterator[Path]:
    """A fresh 0700 directory under `base`, removed with its contents afterwards."""
    path = Path(tempfile.mkdtemp(dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_spilling(primary: Path, work: Callable[[Path], T]) -> T:
    """`work(primary)`; if that runs out of space, `work(d)` for each spill dir in turn.

    `work` gets a base directory for its temporary files and must clean up after itself.
    The last no-space error is raised if every place is full.
    """
    try:
        return work(primary)
    except (OSError, NoSpace) as exc:
        if not is_no_space(exc):
            raise
        failure: BaseException = exc
    for spill in spill_dirs(primary):
        log.info("%s is full (%s); using %s for temporary files", primary, failure, spill)
        try:
            return work(spill)
        except (OSError, NoSpace) as exc:
            if not is_no_space(exc):
                raise
            failure = exc
    raise failure
