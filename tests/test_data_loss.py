"""Issue #15, data loss and resurrection: races between a writer and a listing, an unlink and
an upload, crash recovery and newer data, copies and concurrent replacements, rmdir and a
writer encoding against the directory's reference."""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.deltastore import DeltaStore
from core.errors import IntegrityError, NotFound
from core.layout import Kind, PosixAttrs
from tests.datagen import random_bytes, version_series, write
from tests.faultproxy import FaultProxy, Rule


def keys_under(objectstore, prefix: str) -> dict[str, int]:
    """Every key under `prefix/` → its LastModified (ns)."""
    return {
        o.key: o.last_modified_ns
        for page in objectstore.list_pages(prefix + "/", None)
        for o in page.objects
    }


def cold_read(deltastore: DeltaStore, key: str, tmp_path) -> bytes:
    """The file's bytes straight from S3 (no cache)."""
    out = tmp_path / "cold-out"
    deltastore.get(key, out)
    return out.read_bytes()


def switch_form_within_a_second(deltastore, objectstore, tmp_path, key: str) -> bytes:
    """Store `key` direct, then as a delta in the same second without deleting the direct
    form (a writer between its PUT and its delete of the old form); returns the new bytes."""
    old, new = version_series(2, 60_000, seed=15)
    for _ in range(5):
        time.sleep(1.02 - time.time() % 1)  # just after a second boundary
        deltastore.put(write(tmp_path / "old", old), key, force_direct=True)
        deltastore.put(write(tmp_path / "new", new), key, known_new=True)
        stamps = keys_under(objectstore, key.rpartition("/")[0])
        if stamps[key] // 10**9 == stamps[key + ".delta"] // 10**9:
            return new
        objectstore.delete(key)
    pytest.fail("could not write both forms within one second")


def test_form_switch_tie_keeps_the_newer_form(deltastore, objectstore, tmp_path):
    new = switch_form_within_a_second(deltastore, objectstore, tmp_path, "tie/f.bin")
    listing = deltastore.list_dir("tie")
    assert listing.files["f.bin"].key == "tie/f.bin.delta"
    assert listing.stale == []
    assert deltastore.stat("tie/f.bin").stored_key == "tie/f.bin.delta"
    assert cold_read(deltastore, "tie/f.bin", tmp_path) == new


def test_form_switch_tie_is_not_cleaned_up_by_a_mount(
    mounter, bucket, deltastore, objectstore, tmp_path
):
    new = switch_form_within_a_second(deltastore, objectstore, tmp_path, "tie/f.bin")
    m = mounter(bucket)
    assert (m.path / "tie" / "f.bin").read_bytes() == new
    assert "tie/f.bin.delta" in keys_under(objectstore, "tie")
    objectstore.delete("tie/f.bin")  # the writer finishes: deletes the old form
    assert cold_read(deltastore, "tie/f.bin", tmp_path) == new


def test_unlink_during_upload_wins(s3_server, mounter, bucket, deltastore, objectstore, tmp_path):
    """close() uploads slowly; an unlink meanwhile waits for it and deletes what it stored."""
    data = random_bytes(20_000, 2)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        m = mounter(bucket, "mnt", "--endpoint-url", proxy.url)
        (m.path / "d").mkdir()
        proxy.set_rules(
            Rule("delay", {"PUT"}, schedule={1}, path_contains="victim", stall_seconds=3)
        )
        with ThreadPoolExecutor(1) as pool:
            closed = pool.submit((m.path / "d" / "victim.bin").write_bytes, data)
            deadline = time.monotonic() + 10
            while not proxy.faults["delay"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.faults["delay"] == 1, proxy.log
            os.unlink(m.path / "d" / "victim.bin")
            assert closed.result() == len(data)  # close() succeeded: the data was uploaded
        assert os.listdir(m.path / "d") == []
        assert "victim" not in "".join(keys_under(objectstore, "d"))
        assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh", "--cache-dir", str(tmp_path / "fresh-cache"))
    assert os.listdir(fresh.path / "d") == []
    with pytest.raises(NotFound):
        deltastore.stat("d/victim.bin")


def replace_behind_our_back(deltastore, objectstore, tmp_path, key: str):
    """Store `key` and read its record, then another client replaces the object: returns the
    stale record and the new bytes."""
    deltastore.put(write(tmp_path / "mine", random_bytes(30_000, 4)), key, force_direct=True)
    record = deltastore.stat(key)
    theirs = random_bytes(20_000, 5)
    objectstore.put_bytes(key, theirs, {})
    return record, theirs


def test_chmod_after_a_remote_replace_never_stamps_old_metadata(deltastore, objectstore, tmp_path):
    record, theirs = replace_behind_our_back(deltastore, objectstore, tmp_path, "c/a.bin")
    done = deltastore.set_attrs(record, PosixAttrs(mode=0o100600))
    assert done.sha256 is None  # the current (plain) object's metadata, not ours
    assert cold_read(deltastore, "c/a.bin", tmp_path) == theirs
    assert deltastore.stat("c/a.bin").attrs.mode == 0o100600


def test_rename_after_a_remote_replace_moves_the_current_object(deltastore, objectstore, tmp_path):
    record, theirs = replace_behind_our_back(deltastore, objectstore, tmp_path, "c/a.bin")
    deltastore.rename(record, "c/b.bin")
    assert cold_read(deltastore, "c/b.bin", tmp_path) == theirs
    with pytest.raises(NotFound):
        deltastore.stat("c/a.bin")


def test_ensure_reference_without_local_copy_raises(deltastore, tmp_path):
    with pytest.raises(IntegrityError, match="vanished"):
        deltastore.references.ensure("e/reference.bin", "0" * 64, "x.bin", tmp_path / "missing")


def test_rmdir_keeps_a_reference_a_new_delta_uses(
    s3_server, mounter, bucket, deltastore, objectstore, tmp_path
):
    """rmdir of a directory holding only reference.bin while another writer encodes against
    it: the delete protocol restores the reference and rmdir says ENOTEMPTY."""
    old, new = version_series(2, 60_000, seed=7)
    deltastore.make_dir("r")
    deltastore.put(write(tmp_path / "a", old), "r/a.bin")
    objectstore.delete("r/a.bin.delta")  # removed by a tool that leaves the reference
    with FaultProxy(s3_server.endpoint_url) as proxy:
        m = mounter(bucket, "mnt", "--endpoint-url", proxy.url)
        slow_delete = Rule("delay", {"DELETE"}, schedule={1}, path_contains="reference.bin")
        proxy.set_rules(slow_delete)
        with ThreadPoolExecutor(1) as pool:
            removed = pool.submit(os.rmdir, m.path / "r")
            deadline = time.monotonic() + 10
            while not proxy.faults["delay"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.faults["delay"] == 1, proxy.log
            deltastore.put(write(tmp_path / "b", new), "r/b.bin")  # another writer
            with pytest.raises(OSError) as failed:
                removed.result()
        assert failed.value.errno == errno.ENOTEMPTY
    assert deltastore.stat("r/b.bin").kind == Kind.DELTA
    assert cold_read(deltastore, "r/b.bin", tmp_path) == new
