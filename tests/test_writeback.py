"""The write-back engine (dgfs/writeback.py) driven directly under trio, without FUSE, against
the real local S3 server; results are read back cold through a new DeltaStore."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from core.config import DeltaSettings
from core.deltastore import DeltaStore
from core.layout import ObjectRecord, PosixAttrs
from core.objectstore import ObjectStore
from dgfs.inodes import InodeTable, Node
from dgfs.namespace import Namespace
from dgfs.options import FsOptions
from dgfs.staging import SIDECAR, StagingArea
from dgfs.threads import Threads
from dgfs.writeback import ATTR_DELAY, UploadFailed, WriteBack

MODE = stat.S_IFREG | 0o640


@pytest.fixture
def engine(deltastore, bucket, tmp_path: Path) -> Iterator[Callable[..., WriteBack]]:
    """Build a WriteBack over `store` (default: the test bucket) with its own staging area."""
    made: list[WriteBack] = []

    def make(store: DeltaStore = deltastore, temp_upload_delay: float = 5.0) -> WriteBack:
        opts = FsOptions(cache_base=tmp_path / "base", temp_upload_delay=temp_upload_delay)
        staging = StagingArea(opts.cache_base, bucket, "local")  # makes the cache base
        threads = Threads(4)
        namespace = Namespace(store, opts, InodeTable(), threads)
        wb = WriteBack(store, None, staging, namespace, opts, threads)
        made.append(wb)
        return wb

    yield make
    for wb in made:
        wb.namespace.close()
        with contextlib.suppress(OSError):  # closed by the test already
            wb.staging.close(keep=False)


def cold_read(bucket: str, s3_settings, tmp_path: Path, key: str) -> tuple[bytes, ObjectRecord]:
    """A file's content and record as a new DeltaStore (no shared state) sees them."""
    store = DeltaStore(ObjectStore(bucket, s3_settings), DeltaSettings(), workdir=tmp_path / "cold")
    try:
        out = tmp_path / "cold.out"
        record = store.get(key, out)
        return out.read_bytes(), record
    finally:
        store.close()


def names(store: DeltaStore) -> list[str]:
    """The logical files at the bucket's top level."""
    return [record.logical_key for record in store.list("")]


async def new_file(wb: WriteBack, path: str, data: bytes, excl: bool = False) -> Node:
    """A file created, written and closed for writing (as create/write/release leave it)."""
    node = wb.inodes.node_for(path, False)
    await wb.start_new(node, PosixAttrs(MODE, 1000, 1000, time.time_ns()), excl)
    assert await wb.write(node, 0, data) == len(data)
    return node


def test_write_upload_read_back(engine, bucket, s3_settings, tmp_path):
    wb = engine()
    data = b"hello write-back\n" * 1000

    async def main() -> Node:
        node = await new_file(wb, "dir/a.bin", data)
        sidecar = node.staging.with_name(node.staging.name + SIDECAR)
        assert node.dirty and sidecar.exists()  # recorded for crash recovery
        assert wb.pending_keys() == (["dir/a.bin"], [])
        await wb.closed(node)  # last writer gone: uploaded, staging freed
        assert not node.dirty and node.staging is None and not sidecar.exists()
        return node

    node = trio.run(main)
    assert node.record is not None and wb.pending_keys() == ([], [])
    content, record = cold_read(bucket, s3_settings, tmp_path, "dir/a.bin")
    assert content == data
    assert record.attrs.mode == MODE and record.attrs.uid == 1000


def test_failed_upload_keeps_data_and_is_retried(engine, deltastore, s3_settings, tmp_path):
    missing = DeltaStore(
        ObjectStore("no-such-bucket-for-writeback", s3_settings),
        DeltaSettings(),
        workdir=tmp_path / "missing",
    )
    wb = engine(store=missing)
    data = b"keep me" * 500

    async def main() -> Node:
        node = await new_file(wb, "b.bin", data)
        with pytest.raises(UploadFailed) as failed:
            await wb.upload(node)
        assert failed.value.errno == errno.EIO
        assert node.dirty and node.upload_error == errno.EIO
        assert node.staging.read_bytes() == data
        assert "b.bin" in wb.failed_uploads
        assert await wb.flush_all() == ["b.bin"]
        await wb.closed(node)  # an upload error stays for the retry; the data stays staged
        assert node.staging is not None
        wb.store = deltastore  # the endpoint is back
        await wb.upload(node)
        return node

    try:
        node = trio.run(main)
    finally:
        missing.close()
    assert not node.dirty and wb.failed_uploads == {}
    assert cold_read(deltastore.store.bucket, s3_settings, tmp_path, "b.bin")[0] == data


def test_temp_file_waits_for_its_rename(engine, deltastore, bucket, s3_settings, tmp_path):
    wb = engine()
    data = b"rsync temp file" * 300

    async def main() -> None:
        node = await new_file(wb, ".data.bin.Ab12Cd", data, excl=True)
        await wb.flush(node)  # close(): deferred, nothing stored yet
        assert node.dirty and node.defer_until > 0
        assert names(deltastore) == []
        before = dict(deltastore.requests)
        await wb.rename_file(node, None, "data.bin")
        after = deltastore.requests
        assert not node.dirty and node.path == "data.bin"
        assert after.get("copy", 0) == before.get("copy", 0)  # stored once, under its name
        assert after.get("delete", 0) == before.get("delete", 0)

    trio.run(main)
    assert names(deltastore) == ["data.bin"]
    assert cold_read(bucket, s3_settings, tmp_path, "data.bin")[0] == data


def test_temp_file_uploaded_after_its_delay(engine, deltastore):
    wb = engine(temp_upload_delay=0.5)

    async def main() -> None:
        node = await new_file(wb, ".left.txt.Zz9Yy8", b"left behind", excl=True)
        await wb.flush(node)
        assert names(deltastore) == []
        await wb.apply_due(time.monotonic() + 1.0)
        assert not node.dirty

    trio.run(main)
    assert names(deltastore) == [".left.txt.Zz9Yy8"]


def test_attribute_changes_coalesce_into_one_copy(
    engine, deltastore, bucket, s3_settings, tmp_path
):
    wb = engine()
    mtime = 1_600_000_000 * 10**9

    async def main() -> None:
        node = await new_file(wb, "c.txt", b"attributes")
        await wb.closed(node)
        before = deltastore.requests.get("copy", 0)
        new = wb.effective_attrs(node)
        for change in (dict(mode=stat.S_IFREG | 0o600), dict(uid=1234), dict(mtime_ns=mtime)):
            new = replace(new, **change)
            await wb.set_attrs(node, new, changed=True)  # chmod, chown, utimes
        assert node.attrs_dirty and wb.pending_keys() == ([], ["c.txt"])
        assert deltastore.requests.get("copy", 0) == before
        await wb.apply_due(time.monotonic())  # not yet due
        assert node.attrs_dirty
        await wb.apply_due(time.monotonic() + ATTR_DELAY + 0.1)
        assert not node.attrs_dirty
        assert deltastore.requests.get("copy", 0) == before + 1

    trio.run(main)
    content, record = cold_read(bucket, s3_settings, tmp_path, "c.txt")
    assert content == b"attributes"
    assert (record.attrs.mode, record.attrs.uid, record.attrs.mtime_ns) == (
        stat.S_IFREG | 0o600,
        1234,
        mtime,
    )


def test_recovers_what_a_dead_daemon_left_staged(engine, bucket, s3_settings, tmp_path):
    dead = engine()

    async def crash() -> None:
        node = await new_file(dead, "r.bin", b"staged before a crash")
        os.close(node.fd)

    trio.run(crash)
    dead.staging.close(keep=True)  # its daemon is gone; the dirty file and sidecar stay
    wb = engine()
    trio.run(wb.recover_staged)
    assert wb.recovery == {"state": "done", "report": [f"recovered s3://{bucket}/r.bin"]}
    assert cold_read(bucket, s3_settings, tmp_path, "r.bin")[0] == b"staged before a crash"
