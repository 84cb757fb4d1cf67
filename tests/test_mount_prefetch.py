"""Listing a directory fetches its subdirectories' listings ahead, in parallel, so a cold
`find` does not wait for one LIST after another (issue #17); a listing fetched ahead never
hides a file written meanwhile."""

from __future__ import annotations

import os
import time

from tests.mounting import mount_status


def _wait_ahead(mnt, count: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = mount_status(mnt.path)
        if status["listings_fetched_ahead"] >= count or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_subdirectory_listings_fetched_ahead(mounter, bucket, objectstore):
    for d in range(6):
        for f in range(3):
            objectstore.put_bytes(f"top/d{d}/f{f}.txt", b"x" * (d + f), {})
    mnt = mounter(bucket, "mnt", "--metadata-ttl", "60")
    assert os.listdir(mnt.path) == ["top"]
    assert sorted(os.listdir(mnt.path / "top")) == [f"d{d}" for d in range(6)]
    status = _wait_ahead(mnt, 6)
    assert status["listings_fetched_ahead"] >= 6
    lists = status["s3_requests"].get("list", 0)
    for d in range(6):
        assert sorted(os.listdir(mnt.path / "top" / f"d{d}")) == [f"f{f}.txt" for f in range(3)]
        assert (mnt.path / "top" / f"d{d}" / "f1.txt").read_bytes() == b"x" * (d + 1)
    assert mount_status(mnt.path)["s3_requests"].get("list", 0) == lists  # no LIST left


def test_files_written_during_prefetch_stay_visible(mounter, bucket, objectstore):
    for d in range(8):
        objectstore.put_bytes(f"w/d{d}/old", b"o", {})
    mnt = mounter(bucket, "mnt", "--metadata-ttl", "60")
    os.listdir(mnt.path / "w")  # starts the LISTs of d0..d7 ahead
    for d in range(8):  # while they may still be in flight
        (mnt.path / "w" / f"d{d}" / "new").write_bytes(b"n")
        os.unlink(mnt.path / "w" / f"d{d}" / "old")
    _wait_ahead(mnt, 8, timeout=3)
    for d in range(8):
        assert os.listdir(mnt.path / "w" / f"d{d}") == ["new"]
