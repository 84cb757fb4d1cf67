"""keep_cache: a second read of an unchanged file is served by the kernel's page cache; a
file replaced in S3 is read anew on the first open after the metadata TTL (issue #17)."""

from __future__ import annotations

import os
import time

from tests.datagen import random_bytes
from tests.mounting import mount_status

MiB = 2**20


def _read(path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _reads(mnt) -> int:
    return mount_status(mnt.path)["read_requests"]


def test_second_read_of_unchanged_file_not_served_by_daemon(mounter, bucket, objectstore):
    first = random_bytes(2 * MiB, 1)
    objectstore.put_bytes("d/f.bin", first, {})
    mnt = mounter(bucket)
    path = mnt.path / "d" / "f.bin"
    assert _read(path) == first
    after_first = _reads(mnt)
    assert after_first > 0
    assert _read(path) == first  # same record: the kernel keeps the pages
    assert _read(path) == first
    assert _reads(mnt) == after_first

    second = random_bytes(2 * MiB, 2)  # same size: only the ETag tells
    objectstore.put_bytes("d/f.bin", second, {})
    time.sleep(1.5)  # past the metadata TTL (1 s): the next open looks the file up again
    assert _read(path) == second
    assert _reads(mnt) > after_first
    after_change = _reads(mnt)
    assert _read(path) == second
    assert _reads(mnt) == after_change


def test_written_file_read_back_through_daemon_then_cached(mnt):
    path = mnt.path / "w.bin"
    data = random_bytes(MiB, 3)
    path.write_bytes(data)
    before = _reads(mnt)
    assert _read(path) == data  # first open after the write drops pages: read from dgfs
    middle = _reads(mnt)
    assert middle > before
    assert _read(path) == data
    assert _reads(mnt) == middle
    newer = random_bytes(MiB, 4)
    path.write_bytes(newer)  # a writer here: the pages are not trusted afterwards
    assert _read(path) == newer
    assert _reads(mnt) > middle


def test_reader_open_across_a_change_keeps_pages_untrusted(mounter, bucket, objectstore):
    """A handle opened on the old record may still fill pages after the record changed:
    no open keeps the cache until one without other handles has dropped them."""
    objectstore.put_bytes("g.bin", random_bytes(MiB, 5), {})
    mnt = mounter(bucket)
    path = mnt.path / "g.bin"
    old = os.open(path, os.O_RDONLY)
    try:
        new = random_bytes(MiB, 6)
        objectstore.put_bytes("g.bin", new, {})
        time.sleep(1.5)
        assert _read(path) == new
        os.pread(old, MiB, 0)  # the old handle reads (its own content) into the page cache
    finally:
        os.close(old)
    assert _read(path) == new
    assert _read(path) == new


def test_sequential_read_comes_in_large_requests(mnt):
    """As root the mount's readahead is raised to 1 MiB (dgfs/mount.py: READAHEAD_KB), so a
    sequential read of 8 MiB takes about 8 FUSE reads, not 64."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("the readahead knob in /sys needs root")
    data = random_bytes(8 * MiB, 7)
    (mnt.path / "big.bin").write_bytes(data)
    before = _reads(mnt)
    assert _read(mnt.path / "big.bin") == data
    assert _reads(mnt) - before <= 24
