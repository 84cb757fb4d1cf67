"""The delta store against the real local S3 server: layout, round trips, races, integrity."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from core import TOOL_NAME, layout
from core.config import DeltaSettings
from core.deltastore import DeltaStore
from core.errors import IntegrityError, InvalidName, NotFound
from core.layout import Kind, PosixAttrs
from tests.datagen import random_bytes, version_series, write


def roundtrip(store: DeltaStore, tmp_path: Path, key: str, data: bytes):
    src = write(tmp_path / "in" / "src", data)
    store.put(src, key)
    out = tmp_path / "out"
    got = store.get(key, out)
    assert out.read_bytes() == data
    assert got.original_size == len(data)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    return got


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 5000])
def test_small_sizes_round_trip(deltastore, tmp_path, size):
    roundtrip(deltastore, tmp_path, f"dir/f{size}.bin", random_bytes(size, size))


def test_thirty_megabytes(deltastore, tmp_path):
    data = random_bytes(30 * 2**20, 7)
    record = roundtrip(deltastore, tmp_path, "big/thirty.bin", data)
    assert record.kind == Kind.DELTA  # first eligible file: reference + zero-diff self-delta
    assert deltastore.stat("big/thirty.bin").stored_size < 1000


def test_version_series_stored_as_small_deltas(deltastore, objectstore, tmp_path):
    versions = version_series(6, 2 * 2**20)
    for i, data in enumerate(versions):
        roundtrip(deltastore, tmp_path, f"rel/app-1.{i}.zip", data)
    records = deltastore.list("rel")
    assert [r.logical_key for r in records] == [f"rel/app-1.{i}.zip" for i in range(6)]
    assert all(r.kind == Kind.DELTA for r in records)
    assert all(r.stored_size < 0.05 * r.original_size for r in records)
    ref = objectstore.head("rel/reference.bin")
    assert ref.metadata["dg-file-sha256"] == hashlib.sha256(versions[0]).hexdigest()


def test_identical_file_twice(deltastore, tmp_path):
    data = random_bytes(100_000, 3)
    roundtrip(deltastore, tmp_path, "same/a.bin", data)
    second = roundtrip(deltastore, tmp_path, "same/b.bin", data)
    assert second.kind == Kind.DELTA
    assert deltastore.stat("same/b.bin").stored_size < 200


def test_unrelated_random_data_goes_direct(deltastore, tmp_path):
    roundtrip(deltastore, tmp_path, "mix/first.bin", random_bytes(200_000, 1))
    record = roundtrip(deltastore, tmp_path, "mix/second.bin", random_bytes(200_000, 2))
    assert record.kind == Kind.DIRECT
    assert deltastore.stat("mix/second.bin").kind == Kind.DIRECT


def test_max_ratio_really_falls_back(objectstore, tmp_path):
    store = DeltaStore(objectstore, DeltaSettings(max_ratio=0.01), workdir=tmp_path / "w")
    versions = version_series(2, 100_000)
    roundtrip(store, tmp_path, "r/a.zip", versions[0])
    changed = versions[1][:50_000] + random_bytes(50_000, 9)
    assert roundtrip(store, tmp_path, "r/b.zip", changed).kind == Kind.DIRECT


@pytest.mark.parametrize(
    "key",
    [
        "with space/file name.bin",
        "unicodé/ファイル.bin",
        "hash#dir/a#b.bin",
        "pct%dir/100%.bin",
        "rootfile.bin",
        "a/b/c/deep.bin",
    ],
)
def test_names(deltastore, tmp_path, key):
    data = random_bytes(4096, len(key))
    roundtrip(deltastore, tmp_path, key, data)
    assert [r.logical_key for r in deltastore.list(layout.deltaspace_of(key))] == [key]


def test_reserved_names_refused(deltastore, tmp_path):
    src = write(tmp_path / "x", b"x")
    for key in ("d/reference.bin", "d/x.delta", "d/.dgfs/x", ".deltaglider/x"):
        with pytest.raises(InvalidName):
            deltastore.put(src, key)


def test_metadata_matches_spec_literally(deltastore, objectstore, tmp_path):
    versions = version_series(2, 50_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "m/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "m/b.zip")
    deltastore.put(write(tmp_path / "c", b"tiny"), "m/c.txt")
    sha = [hashlib.sha256(v).hexdigest() for v in versions]
    ref = objectstore.head("m/reference.bin").metadata
    assert set(ref) == {"dg-tool", "dg-source-name", "dg-file-sha256", "dg-created-at", "dg-note"}
    assert ref["dg-tool"] == TOOL_NAME and ref["dg-note"] == "reference"
    assert ref["dg-source-name"] == "a.zip" and ref["dg-file-sha256"] == sha[0]
    assert ref["dg-created-at"].endswith("Z")
    first = objectstore.head("m/a.zip.delta").metadata
    assert first["dg-note"] == "zero-diff (reference identical)"
    delta = objectstore.head("m/b.zip.delta")
    meta = delta.metadata
    assert meta.pop("dgfs-written").isdigit()  # dgfs's own key (deltaglider ignores it)
    assert set(meta) == {
        "dg-tool",
        "dg-original-name",
        "dg-file-sha256",
        "dg-file-size",
        "dg-created-at",
        "dg-ref-key",
        "dg-ref-sha256",
        "dg-delta-size",
        "dg-delta-cmd",
    }
    assert meta["dg-original-name"] == "b.zip"
    assert meta["dg-file-sha256"] == sha[1]
    assert meta["dg-file-size"] == str(len(versions[1]))
    assert meta["dg-ref-key"] == "m/reference.bin"
    assert meta["dg-ref-sha256"] == sha[0]
    assert meta["dg-delta-size"] == str(delta.size)
    assert meta["dg-created-at"].endswith("Z")
    direct = objectstore.head("m/c.txt").metadata
    assert direct["dg-compression"] == "none"
    assert direct["dg-file-size"] == "4"
    assert not direct["dg-created-at"].endswith("Z")


def test_concurrent_first_writers_one_reference(objectstore, tmp_path):
    versions = version_series(6, 300_000, seed=5)
    barrier = threading.Barrier(len(versions))
    errors = []

    def writer(i: int) -> None:
        store = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / f"w{i}")
        src = write(tmp_path / f"src{i}", versions[i])
        barrier.wait()
        try:
            store.put(src, f"race/v{i}.zip")
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(versions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = [o.key for p in objectstore.list_pages("race/") for o in p.objects]
    assert keys.count("race/reference.bin") == 1
    reader = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "r")
    for i, data in enumerate(versions):
        out = tmp_path / f"out{i}"
        reader.get(f"race/v{i}.zip", out)
        assert out.read_bytes() == data


def test_corrupted_delta_is_an_error_naming_the_key(deltastore, objectstore, tmp_path):
    versions = version_series(2, 100_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "c/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "c/b.zip")
    info = objectstore.head("c/b.zip.delta")
    body = bytearray(objectstore.get_bytes("c/b.zip.delta"))
    body[len(body) // 2] ^= 0xFF
    objectstore.put_bytes("c/b.zip.delta", bytes(body), info.metadata)
    with pytest.raises(IntegrityError, match="c/b.zip.delta"):
        deltastore.get("c/b.zip", tmp_path / "out")


def test_corrupted_reference_is_an_error(deltastore, objectstore, tmp_path):
    versions = version_series(2, 100_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "cr/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "cr/b.zip")
    info = objectstore.head("cr/reference.bin")
    objectstore.put_bytes("cr/reference.bin", b"garbage" * 100, info.metadata)
    with pytest.raises(IntegrityError, match="cr/reference.bin"):
        deltastore.get("cr/b.zip", tmp_path / "out")


def test_delete_removes_reference_with_last_delta(deltastore, objectstore, tmp_path):
    versions = version_series(2, 50_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "del/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "del/b.zip")
    objectstore.put_bytes("del2/other.bin", b"sibling", {})
    deltastore.delete(deltastore.stat("del/a.zip"))
    objectstore.head("del/reference.bin")  # b.zip still needs it
    deltastore.delete(deltastore.stat("del/b.zip"))
    with pytest.raises(NotFound):
        objectstore.head("del/reference.bin")
    assert objectstore.get_bytes("del2/other.bin") == b"sibling"


def test_overwrite_switching_form_leaves_one_object(deltastore, objectstore, tmp_path):
    versions = version_series(2, 50_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "sw/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "sw/b.zip")
    assert deltastore.stat("sw/b.zip").kind == Kind.DELTA
    deltastore.put(write(tmp_path / "r", random_bytes(50_000, 4)), "sw/b.zip")
    keys = sorted(o.key for p in objectstore.list_pages("sw/") for o in p.objects)
    assert keys == ["sw/a.zip.delta", "sw/b.zip", "sw/reference.bin"]
    out = tmp_path / "out"
    deltastore.get("sw/b.zip", out)
    assert out.read_bytes() == random_bytes(50_000, 4)


def test_newer_form_wins_when_both_exist(deltastore, objectstore, tmp_path):
    versions = version_series(2, 50_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "both/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "both/b.zip")
    time.sleep(1.1)  # a later second: a LastModified tie settles otherwise
    objectstore.put_bytes("both/b.zip", b"newer plain", {})
    listing = deltastore.list_dir("both")
    assert listing.files["b.zip"].key == "both/b.zip"
    assert listing.stale == ["both/b.zip.delta"]
    assert deltastore.stat("both/b.zip").stored_key == "both/b.zip"


def test_plain_objects_served_as_is(deltastore, objectstore, tmp_path):
    objectstore.put_bytes("plain/file.txt", b"written by another tool", {})
    record = deltastore.stat("plain/file.txt")
    assert record.kind == Kind.PLAIN
    out = tmp_path / "out"
    deltastore.get("plain/file.txt", out)
    assert out.read_bytes() == b"written by another tool"


def test_listing_hides_layout_objects_and_sorts_logically(deltastore, objectstore, tmp_path):
    versions = version_series(3, 20_000)
    for name, data in (("v1.zip", versions[0]), ("v1.2.zip", versions[1]), ("v1.1", versions[2])):
        deltastore.put(write(tmp_path / name, data), f"s/{name}")
    objectstore.put_bytes("s/.deltaglider/tmp/x", b"", {})
    objectstore.put_bytes("s/.dgfs/refs/r/reference.bin", b"", {})
    listing = deltastore.list_dir("s")
    assert sorted(listing.files) == ["v1.1", "v1.2.zip", "v1.zip"]
    assert listing.dirs == set()
    assert [r.logical_key for r in deltastore.list("s")] == ["s/v1.1", "s/v1.2.zip", "s/v1.zip"]


def test_rename_within_and_across_deltaspaces(deltastore, objectstore, tmp_path):
    versions = version_series(3, 60_000)
    for i in range(3):
        deltastore.put(write(tmp_path / f"v{i}", versions[i]), f"src/v{i}.zip")
    moved = deltastore.rename(deltastore.stat("src/v1.zip"), "src/renamed.zip")
    assert moved.kind == Kind.DELTA
    across = deltastore.rename(deltastore.stat("src/v2.zip"), "dst/v2.zip")
    for key, data in (("src/renamed.zip", versions[1]), ("dst/v2.zip", versions[2])):
        out = tmp_path / "out"
        deltastore.get(key, out)
        assert out.read_bytes() == data
    assert across.kind == Kind.DELTA
    meta = objectstore.head("dst/v2.zip.delta").metadata
    assert meta["dg-ref-key"] == "dst/reference.bin"
    with pytest.raises(NotFound):
        deltastore.stat("src/v2.zip")


def test_set_attrs_without_reupload(deltastore, tmp_path):
    deltastore.put(write(tmp_path / "a", b"hello"), "attrs/a.txt")
    record = deltastore.stat("attrs/a.txt")
    deltastore.set_attrs(
        record, PosixAttrs(mode=0o100640, uid=12, gid=34, mtime_ns=1_500_000_000_123)
    )
    again = deltastore.stat("attrs/a.txt")
    assert again.attrs == PosixAttrs(mode=0o100640, uid=12, gid=34, mtime_ns=1_500_000_000_123)
    assert again.sha256 == record.sha256


def test_unicode_metadata_values_round_trip(deltastore, objectstore, tmp_path):
    deltastore.put(write(tmp_path / "a", b"x" * 500), "u/ünïcødé 100%.txt")
    meta = objectstore.head("u/ünïcødé 100%.txt").metadata
    assert meta["dg-original-name"].startswith("=?UTF-8?B?")
    assert deltastore.stat("u/ünïcødé 100%.txt").metadata["dg-original-name"] == "ünïcødé 100%.txt"


def test_reads_every_metadata_spelling(objectstore, deltastore, tmp_path):
    """deltaglider 5.x bare keys and the Rust proxy's dg-ref-path are understood."""
    versions = version_series(2, 30_000)
    deltastore.put(write(tmp_path / "a", versions[0]), "sp/a.zip")
    deltastore.put(write(tmp_path / "b", versions[1]), "sp/b.zip")
    delta = objectstore.head("sp/b.zip.delta")
    old_style = {
        "file_sha256": delta.metadata["dg-file-sha256"],
        "file_size": delta.metadata["dg-file-size"],
        "ref_sha256": delta.metadata["dg-ref-sha256"],
        "tool": "deltaglider/5.1.1",
    }
    objectstore.put_bytes(
        "sp/c.zip.delta",
        objectstore.get_bytes("sp/b.zip.delta"),
        {**old_style, "ref_key": "sp/reference.bin"},
    )
    objectstore.put_bytes(
        "sp/d.zip.delta",
        objectstore.get_bytes("sp/b.zip.delta"),
        {**old_style, "dg-ref-path": "reference.bin"},
    )
    for key in ("sp/c.zip", "sp/d.zip"):
        out = tmp_path / "out"
        deltastore.get(key, out)
        assert out.read_bytes() == versions[1]
