"""Directory index objects: a cold mount lists with LIST + one GET, never trusting it blindly."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from core import dirindex
from core.config import dir_index_enabled
from core.errors import NotFound
from dgfs.cli import parse_o_options
from tests.datagen import random_bytes, version_series, write
from tests.mounting import mount_status

N = 40
INDEX = dirindex.index_key("d")
DIR_HEAD = 1  # the HEAD of the directory marker `d/` (its mode and times)


def _fill(mounter, bucket, *extra: str) -> dict[str, int]:
    """Write N files (deltas and direct) through a mount in `d/`, unmount; name → size."""
    m = mounter(bucket, "writer", *extra)
    (m.path / "d").mkdir()
    sizes = {}
    for i, data in enumerate(version_series(N, 4_000 + 0)):
        (m.path / "d" / f"v{i:02d}.bin").write_bytes(data)
        sizes[f"v{i:02d}.bin"] = len(data)
    (m.path / "d" / "small.txt").write_bytes(b"hello\n")
    sizes["small.txt"] = 6
    assert m.umount().returncode == 0, m.log_text()
    return sizes


def _cold(mounter, bucket, tmp_path, name: str, *extra: str):
    """A fresh mount with an empty cache dir."""
    return mounter(
        bucket, name, "--cache-dir", str(tmp_path / f"cache-{name}"), "--metadata-ttl", "60", *extra
    )


def _sizes(m) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (m.path / "d").iterdir()}


def test_cold_mount_lists_with_one_get_and_no_head(mounter, bucket, objectstore, tmp_path):
    sizes = _fill(mounter, bucket)
    objectstore.head(INDEX)  # written at unmount
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == sizes
    requests = mount_status(cold.path)["s3_requests"]
    assert requests.get("head", 0) == DIR_HEAD, requests  # no HEAD per file
    assert requests.get("get", 0) == 1, requests  # the index
    modes = {p.name: p.stat().st_mode & 0o777 for p in (cold.path / "d").iterdir()}
    assert set(modes.values()) == {0o644}


def test_foreign_changes_after_the_index_are_seen(
    mounter, bucket, objectstore, deltastore, tmp_path
):
    _fill(mounter, bucket)
    new = random_bytes(7_777, 3)
    deltastore.put(write(tmp_path / "v01.bin", new), "d/v01.bin")  # dg layout, new ETag
    objectstore.put_bytes("d/small.txt", b"plain write by another tool", {})
    objectstore.put_bytes("d/extra.txt", b"x" * 123, {})
    cold = _cold(mounter, bucket, tmp_path, "cold")
    sizes = _sizes(cold)
    assert sizes["v01.bin"] == 7_777
    assert sizes["small.txt"] == len(b"plain write by another tool")
    assert sizes["extra.txt"] == 123
    assert (cold.path / "d" / "v01.bin").read_bytes() == new
    requests = mount_status(cold.path)["s3_requests"]
    assert requests.get("head", 0) == DIR_HEAD + 3, requests  # only the changed objects


def test_same_size_rewrite_with_new_metadata_is_seen(mounter, bucket, objectstore, tmp_path):
    """A foreign rewrite keeping size (and maybe the second) has a new ETag: not trusted."""
    sizes = _fill(mounter, bucket)
    objectstore.put_bytes("d/small.txt", b"HELLO\n", {"mode": "33152"})  # s3fs-style 0600
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == sizes
    assert (cold.path / "d" / "small.txt").stat().st_mode & 0o777 == 0o600
    assert (cold.path / "d" / "small.txt").read_bytes() == b"HELLO\n"


@pytest.mark.parametrize(
    "garbage",
    [
        b"not gzip at all",
        gzip.compress(b"{not json"),
        gzip.compress(json.dumps({"format": "x", "entries": {}}).encode()),
        gzip.compress(json.dumps({"format": "dgfs-dir-index", "version": 1}).encode()),
        gzip.compress(
            json.dumps(
                {"format": "dgfs-dir-index", "version": 1, "prefix": "d", "entries": {"a": 1}}
            ).encode()
        ),
    ],
)
def test_corrupt_index_is_ignored(mounter, bucket, objectstore, tmp_path, garbage):
    sizes = _fill(mounter, bucket)
    objectstore.put_bytes(INDEX, garbage, {})
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == sizes
    requests = mount_status(cold.path)["s3_requests"]
    assert requests.get("head", 0) == DIR_HEAD + N + 1, requests


def test_index_format_rules():
    """Pure: entries match only the same ETag, size and second; another directory's index
    (copied by a rename) and malformed entries are refused."""
    from core.layout import ObjectRecord
    from core.objectstore import ObjectInfo

    rec = ObjectRecord("d/a", "d/a", "plain", 5, 5, '"e1"', 1_700_000_000_400_000_000)
    body = dirindex.encode("d", {"a": dirindex.entry_of(rec), "b": dirindex.entry_of(rec)})
    entries = dirindex.decode("d", body)
    same = ObjectInfo("d/a", 5, '"e1"', 1_700_000_000_900_000_000)
    assert dirindex.record_for(entries, same).original_size == 5
    for other in (
        ObjectInfo("d/a", 5, '"e2"', same.last_modified_ns),
        ObjectInfo("d/a", 6, '"e1"', same.last_modified_ns),
        ObjectInfo("d/a", 5, '"e1"', 1_700_000_001_000_000_000),
        ObjectInfo("d/a", 5, "", same.last_modified_ns),
        ObjectInfo("d/c", 5, '"e1"', same.last_modified_ns),
    ):
        assert dirindex.record_for(entries, other) is None
    with pytest.raises(ValueError):
        dirindex.decode("e", body)
    with pytest.raises(ValueError):
        dirindex.decode("d", gzip.compress(b"\x00" * 10) + b"trailing junk")


@pytest.mark.parametrize("option", [("--no-dir-index",), ("-o", "no_dir_index")])
def test_option_off_writes_no_index(mounter, bucket, objectstore, tmp_path, option):
    sizes = _fill(mounter, bucket, *option)
    with pytest.raises(NotFound):
        objectstore.head(INDEX)
    cold = _cold(mounter, bucket, tmp_path, "cold", *option)
    assert _sizes(cold) == sizes
    assert cold.umount().returncode == 0
    with pytest.raises(NotFound):
        objectstore.head(INDEX)


def test_option_parsing():
    assert parse_o_options(("no_dir_index,ro",)) == {"dir_index": False, "read_only": True}
    assert dir_index_enabled(None, {}) is True
    assert dir_index_enabled(None, {"DG_DIR_INDEX": "0"}) is False
    assert dir_index_enabled("0", {"DG_DIR_INDEX": "1"}) is False
    assert dir_index_enabled(True, {"DG_DIR_INDEX": "0"}) is True


def test_cold_reader_writes_index_but_read_only_does_not(mounter, bucket, objectstore, tmp_path):
    for i in range(40):  # written by another tool: no index
        objectstore.put_bytes(f"d/f{i:02d}", b"z" * i, {"uid": "123"})
    ro = _cold(mounter, bucket, tmp_path, "ro", "--read-only")
    assert len(_sizes(ro)) == 40
    assert ro.umount().returncode == 0
    with pytest.raises(NotFound):
        objectstore.head(INDEX)
    reader = _cold(mounter, bucket, tmp_path, "reader")
    assert len(_sizes(reader)) == 40
    assert reader.umount().returncode == 0
    objectstore.head(INDEX)
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == {f"f{i:02d}": i for i in range(40)}
    assert {(cold.path / "d" / f"f{i:02d}").stat().st_uid for i in range(40)} == {123}
    assert mount_status(cold.path)["s3_requests"].get("head", 0) == DIR_HEAD  # the marker probe


def test_index_is_not_a_file_anywhere(mounter, bucket, objectstore, tmp_path):
    sizes = _fill(mounter, bucket)
    m = _cold(mounter, bucket, tmp_path, "look")
    assert sorted(os.listdir(m.path / "d")) == sorted(sizes)
    assert ".dgfs" not in os.listdir(m.path)
    dgfs = [sys.executable, "-m", "dgfs.cli"]
    stats = json.loads(
        subprocess.run(
            [*dgfs, "stats", f"s3://{bucket}", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert stats["object_count"] == len(sizes)
    assert stats["plain_objects"] == 0
    gc = json.loads(
        subprocess.run(
            [*dgfs, "gc", f"s3://{bucket}", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert gc["orphaned_references"] == []
    verify = subprocess.run(
        [*dgfs, "verify", f"s3://{bucket}", "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(verify.stdout)["ok"] == len(sizes)


def test_rmdir_and_emptied_directory_leave_no_index(mounter, bucket, objectstore, tmp_path):
    _fill(mounter, bucket)
    m = _cold(mounter, bucket, tmp_path, "rm", "--metadata-ttl", "1")
    for p in (m.path / "d").iterdir():
        p.unlink()
    (m.path / "d").rmdir()
    assert not (m.path / "d").exists()
    assert m.umount().returncode == 0
    assert [o.key for page in objectstore.list_pages("", None) for o in page.objects] == []


def test_quiet_directory_is_indexed_while_mounted(mounter, bucket, objectstore):
    m = mounter(bucket, "live")
    for i in range(5):
        (m.path / f"f{i}").write_bytes(b"q" * (100 + i))
    index = dirindex.index_key("")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            objectstore.head(index)
            break
        except NotFound:
            time.sleep(0.5)
    entries = dirindex.decode("", objectstore.get_bytes(index))
    assert {n: e.size for n, e in entries.items()} == {f"f{i}": 100 + i for i in range(5)}


def test_directory_emptied_by_another_tool_goes_away(mounter, bucket, objectstore, tmp_path):
    _fill(mounter, bucket)
    for page in objectstore.list_pages("d/", None):
        for obj in page.objects:
            if obj.key != INDEX:
                objectstore.delete(obj.key)
    m = _cold(mounter, bucket, tmp_path, "look", "--metadata-ttl", "1")
    assert os.listdir(m.path / "d") == []  # only its index is left: shown empty, then dropped
    deadline = time.monotonic() + 15
    while "d" in os.listdir(m.path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "d" not in os.listdir(m.path)
    with pytest.raises(NotFound):
        objectstore.head(INDEX)


def test_chmod_through_a_mount_is_indexed(mounter, bucket, tmp_path):
    sizes = _fill(mounter, bucket)
    m = _cold(mounter, bucket, tmp_path, "chmod")
    for name in ("v00.bin", "small.txt"):
        (m.path / "d" / name).chmod(0o600)
    assert m.umount().returncode == 0
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == sizes
    modes = {p.name: p.stat().st_mode & 0o777 for p in (cold.path / "d").iterdir()}
    assert modes["v00.bin"] == modes["small.txt"] == 0o600
    assert mount_status(cold.path)["s3_requests"].get("head", 0) == DIR_HEAD


def test_writer_indexes_its_own_files_without_heading_them(mounter, bucket, objectstore, tmp_path):
    """Files written through the mount carry the ETag their PUT returned: the index written
    after them costs a LIST and a PUT, not a HEAD per file, and a cold reader trusts it."""
    sizes = _fill(mounter, bucket)
    m = _cold(mounter, bucket, tmp_path, "writer2")
    assert _sizes(m) == sizes
    before = mount_status(m.path)["s3_requests"].get("head", 0)
    for i in range(20):
        (m.path / "d" / f"new{i:02d}.dat").write_bytes(random_bytes(3000, i))
        sizes[f"new{i:02d}.dat"] = 3000
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "new19.dat" in dirindex.decode("d", objectstore.get_bytes(INDEX)):
            break
        time.sleep(0.5)
    assert "new19.dat" in dirindex.decode("d", objectstore.get_bytes(INDEX))
    heads = mount_status(m.path)["s3_requests"].get("head", 0) - before
    assert heads <= 2, heads  # the deltaspace's reference (was one more per written file)
    assert m.umount().returncode == 0, m.log_text()
    cold = _cold(mounter, bucket, tmp_path, "cold")
    assert _sizes(cold) == sizes
    assert mount_status(cold.path)["s3_requests"].get("head", 0) == DIR_HEAD
