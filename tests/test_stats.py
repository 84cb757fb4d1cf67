"""`dgfs stats`, `dgfs gc`, `dgfs cache` and core.stats against the real local S3 server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cache import CacheSettings, ContentCache
from core.deltastore import DeltaStore
from core.layout import Kind
from core.metadata import RecordCache
from core.objectstore import ObjectStore
from core.stats import bucket_stats, deltaspace_stats, format_xattrs, remove_orphan
from tests.datagen import random_bytes, version_series, write

REPO = Path(__file__).resolve().parents[1]
XATTR_NAMES = {
    "file-count",
    "delta-count",
    "direct-count",
    "plain-count",
    "original-bytes",
    "stored-bytes",
    "ratio",
    "saved-bytes",
    "reference-size",
    "reference-sha256",
    "policy",
    "computed-at",
}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m dgfs.cli ARGS` with the test's environment (AWS_* of the local server)."""
    return subprocess.run(
        [sys.executable, "-m", "dgfs.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def populate(store: DeltaStore, objects: ObjectStore, tmp_path: Path) -> None:
    """A version series (deltas), direct files, a plain object, hidden keys and a marker."""
    for i, data in enumerate(version_series(4, 200_000)):
        rec = store.put(write(tmp_path / f"v{i}", data), f"releases/app-{i}.zip")
        assert rec.kind == Kind.DELTA
    for key, data in (
        ("releases/random.bin", random_bytes(60_000, 5)),
        ("notes.txt", b"small direct file\n" * 20),
    ):
        assert store.put(write(tmp_path / "d", data), key).kind == Kind.DIRECT
    objects.put_bytes("foreign/plain.dat", random_bytes(5000, 9), {})
    objects.put_bytes(".deltaglider/stats_cache.json", b"{}" * 100, {})
    objects.put_bytes("releases/.dgfs/tmp/x", b"hidden" * 10, {})
    store.make_dir("emptydir")


def expected_totals(objects: ObjectStore, prefix: str = "") -> dict:
    """deltaglider's stats fields, computed independently from LIST + HEAD."""
    deltas = directs = plain = total = stored = 0
    refs: dict[str, int] = {}
    spaces_with_deltas = set()
    for page in objects.list_pages(prefix, delimiter=None):
        for obj in page.objects:
            parts = obj.key.split("/")
            if obj.key.endswith("/") or {".deltaglider", ".dgfs"} & set(parts[:-1]):
                continue
            space = obj.key.rsplit("/", 1)[0] if "/" in obj.key else ""
            if parts[-1] == "reference.bin":
                refs[space] = obj.size
                continue
            meta = objects.head(obj.key).metadata or {}
            stored += obj.size
            if obj.key.endswith(".delta"):
                deltas += 1
                total += int(meta["dg-file-size"])
                spaces_with_deltas.add(space)
            else:
                total += obj.size
                directs += 1
                plain += "dg-file-sha256" not in meta
    stored += sum(size for space, size in refs.items() if space in spaces_with_deltas)
    return {
        "object_count": deltas + directs,
        "total_size": total,
        "compressed_size": stored,
        "space_saved": total - stored,
        "delta_objects": deltas,
        "direct_objects": directs,
        "plain_objects": plain,
    }


@pytest.fixture
def filled(deltastore, objectstore, tmp_path):
    populate(deltastore, objectstore, tmp_path)
    return deltastore


def test_stats_json_matches_direct_computation(filled, objectstore, bucket):
    result = run_cli("stats", f"s3://{bucket}", "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    want = expected_totals(objectstore)
    assert {k: got[k] for k in want} == want
    assert (want["delta_objects"], want["direct_objects"], want["plain_objects"]) == (4, 3, 1)
    assert got["bucket"] == bucket
    assert got["average_compression_ratio"] == pytest.approx(
        want["space_saved"] / want["total_size"]
    )
    assert got["original_bytes"] == want["total_size"]
    assert got["stored_bytes"] == want["compressed_size"]
    assert got["ratio"] == pytest.approx(want["compressed_size"] / want["total_size"])
    assert got["orphaned_references"] == [] and got["missing_references"] == []
    assert "deltaspaces" not in got
    assert "plain" in result.stderr  # the plain object is reported


def test_stats_prefix_detailed(filled, objectstore, bucket):
    result = run_cli("stats", f"s3://{bucket}/releases/", "--json", "--detailed")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    want = expected_totals(objectstore, "releases/")
    assert {k: got[k] for k in want} == want
    space = got["deltaspaces"]["releases"]
    ref = objectstore.head("releases/reference.bin")
    assert space["reference_sha256"] == ref.metadata["dg-file-sha256"]
    assert space["reference_size"] == ref.size
    assert (space["delta_count"], space["direct_count"], space["plain_count"]) == (4, 1, 0)
    assert list(got["deltaspaces"]) == ["releases"]


def test_stats_human_table(filled, bucket):
    result = run_cli("stats", f"s3://{bucket}", "--detailed")
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and "DELTASPACE" in result.stdout
    assert "releases" in result.stdout and "(root)" in result.stdout
    assert "POLICY" in result.stdout and "policy     deltaglider" in result.stdout
    assert "\r" not in result.stderr  # no progress indicator when stderr is not a TTY


def test_orphaned_reference_warning_and_gc(filled, objectstore, bucket):
    for i in range(4):
        objectstore.delete(f"releases/app-{i}.zip.delta")  # leaves releases/reference.bin
    result = run_cli("stats", f"s3://{bucket}", "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert [o["key"] for o in got["orphaned_references"]] == ["releases/reference.bin"]
    assert got["delta_objects"] == 0
    assert got["compressed_size"] == expected_totals(objectstore)["compressed_size"]
    assert "orphaned reference" in result.stderr
    assert f"dgfs gc s3://{bucket} --apply" in result.stderr

    dry = run_cli("gc", f"s3://{bucket}")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove s3://{bucket}/releases/reference.bin" in dry.stdout
    objectstore.head("releases/reference.bin")  # still there

    applied = run_cli("gc", f"s3://{bucket}", "--apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["removed"] == ["releases/reference.bin"]
    assert not any(
        o.key.endswith("reference.bin")
        for page in objectstore.list_pages("", None)
        for o in page.objects
    )
    again = json.loads(run_cli("stats", f"s3://{bucket}", "--json").stdout)
    assert again["orphaned_references"] == []


def test_gc_keeps_reference_when_a_delta_is_back(filled, objectstore, tmp_path):
    store = filled
    assert not remove_orphan(store, "releases/reference.bin")  # deltas exist: kept
    objectstore.head("releases/reference.bin")
    for i in range(1, 4):
        objectstore.delete(f"releases/app-{i}.zip.delta")
    assert not remove_orphan(store, "releases/reference.bin")  # app-0 still uses it
    objectstore.delete("releases/app-0.zip.delta")
    assert remove_orphan(store, "releases/reference.bin")
    assert not remove_orphan(store, "releases/reference.bin")  # already gone


def test_missing_reference_warning(filled, objectstore, bucket):
    objectstore.delete("releases/reference.bin")
    result = run_cli("stats", f"s3://{bucket}", "--json")
    assert result.returncode == 0, result.stderr
    missing = json.loads(result.stdout)["missing_references"]
    assert sorted(m["key"] for m in missing) == [f"releases/app-{i}.zip.delta" for i in range(4)]
    assert {m["reference"] for m in missing} == {"releases/reference.bin"}
    assert "reference is missing" in result.stderr
    assert f"s3://{bucket}/releases/app-2.zip.delta" in result.stderr


def test_deltaspace_stats_and_xattrs(filled, objectstore):
    store = filled
    records = RecordCache(store)
    try:
        stats = deltaspace_stats(store, "releases", records)
        heads = objectstore.requests["head"]
        again = deltaspace_stats(store, "releases/", records)
        assert objectstore.requests["head"] == heads  # records reused: no new HEADs
    finally:
        records.close()
    assert again.file_count == stats.file_count == 5
    listing = {o.key: o for page in objectstore.list_pages("releases/") for o in page.objects}
    ref = objectstore.head("releases/reference.bin")
    originals = sum(
        int(objectstore.head(k).metadata["dg-file-size"]) for k in listing if k.endswith(".delta")
    ) + len(random_bytes(60_000, 5))
    stored = sum(o.size for k, o in listing.items() if "/.dgfs/" not in k)
    assert (stats.delta_count, stats.direct_count, stats.plain_count) == (4, 1, 0)
    assert stats.original_bytes == originals
    assert stats.stored_bytes == stored  # objects + the reference (it has deltas)

    root = deltaspace_stats(store, "")
    xattrs = format_xattrs(stats)
    assert set(xattrs) == {"user.dg.dir." + n for n in XATTR_NAMES}
    assert xattrs["user.dg.dir.file-count"] == "5"
    assert xattrs["user.dg.dir.delta-count"] == "4"
    assert xattrs["user.dg.dir.direct-count"] == "1"
    assert xattrs["user.dg.dir.original-bytes"] == str(originals)
    assert xattrs["user.dg.dir.stored-bytes"] == str(stored)
    assert xattrs["user.dg.dir.ratio"] == f"{stored / originals:.4f}"
    assert xattrs["user.dg.dir.saved-bytes"] == str(originals - stored)
    assert xattrs["user.dg.dir.reference-size"] == str(ref.size)
    assert xattrs["user.dg.dir.reference-sha256"] == ref.metadata["dg-file-sha256"]
    assert xattrs["user.dg.dir.computed-at"].endswith("Z")
    assert xattrs["user.dg.dir.policy"] == stats.policy == "deltaglider"

    whole = bucket_stats(store)
    top = format_xattrs(root, root=True, bucket=whole)
    assert top["user.dg.dir.file-count"] == "1"  # notes.txt; markers and hidden keys ignored
    assert top["user.dg.dir.plain-count"] == "0"
    assert "user.dg.dir.reference-sha256" not in top  # the root has no reference
    assert top["user.dg.bucket.file-count"] == "7"
    assert top["user.dg.bucket.plain-count"] == "1"
    want = expected_totals(objectstore)
    assert top["user.dg.bucket.stored-bytes"] == str(want["compressed_size"])
    assert top["user.dg.bucket.original-bytes"] == str(want["total_size"])
    with pytest.raises(ValueError):
        format_xattrs(root, root=True)


def test_empty_directory_stats(deltastore):
    stats = deltaspace_stats(deltastore, "nothing/here")
    assert (stats.file_count, stats.stored_bytes, stats.ratio) == (0, 0, 0.0)
    assert format_xattrs(stats)["user.dg.dir.ratio"] == "0.0000"


def test_nonexistent_bucket_one_line(s3_server):
    result = run_cli("stats", "s3://no-such-bucket-dgfs-test", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: bucket 'no-such-bucket-dgfs-test' does not exist"
    ]
    for command in ("gc", "verify"):
        other = run_cli(command, "s3://no-such-bucket-dgfs-test")
        assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1


def test_unreachable_endpoint_and_bad_credentials(bucket):
    down = run_cli("stats", f"s3://{bucket}", "--endpoint-url", "http://127.0.0.1:9")
    assert down.returncode == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach endpoint" in lines[0], down.stderr
    denied = run_cli("stats", f"s3://{bucket}", env={"AWS_ACCESS_KEY_ID": "nobody-dgfs"})
    assert denied.returncode in (0, 1)  # the local server may not check credentials
    if denied.returncode:
        assert len(denied.stderr.strip().splitlines()) == 1 and "Traceback" not in denied.stderr


def test_cache_info_and_clear(tmp_path):
    key = base64.urlsafe_b64encode(bytes(range(32))).decode()
    cache_dir = tmp_path / "cache"
    settings = CacheSettings.from_env({"DG_CACHE_ENCRYPTION_KEY": key}, cache_dir=cache_dir)
    with ContentCache(settings) as cache:
        for i in range(3):
            cache.insert_file(write(tmp_path / f"e{i}", random_bytes(10_000, i))).close()
    keyed = {"DG_CACHE_ENCRYPTION_KEY": key, "DG_CACHE_KEY_FILE": ""}
    info = run_cli("cache", "info", "--cache-dir", str(cache_dir), "--json", env=keyed)
    assert info.returncode == 0, info.stderr
    got = json.loads(info.stdout)
    assert got["shared"]["entries"] == 3 and got["shared"]["bytes"] > 30_000
    assert got["encryption_key"] == "configured"

    unkeyed = {"DG_CACHE_ENCRYPTION_KEY": "", "DG_CACHE_KEY_FILE": ""}
    counted = run_cli("cache", "info", "--cache-dir", str(cache_dir), "--json", env=unkeyed)
    got = json.loads(counted.stdout)
    assert got["shared"]["entries"] == 3 and got["encryption_key"] == "ephemeral"
    assert any("counted, not opened" in n for n in got["notes"])
    human = run_cli("cache", "info", "--cache-dir", str(cache_dir), env=unkeyed)
    assert "shared entries   3" in human.stdout and "note:" in human.stdout

    cleared = run_cli("cache", "clear", "--cache-dir", str(cache_dir), env=keyed)
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 3 of 3 entries" in cleared.stdout
    after = json.loads(
        run_cli("cache", "info", "--cache-dir", str(cache_dir), "--json", env=keyed).stdout
    )
    assert after["shared"]["entries"] == 0


def test_cache_clear_without_key_and_missing_dir(tmp_path):
    key = base64.urlsafe_b64encode(bytes(32)).decode()
    cache_dir = tmp_path / "cache"
    settings = CacheSettings.from_env({"DG_CACHE_ENCRYPTION_KEY": key}, cache_dir=cache_dir)
    with ContentCache(settings) as cache:
        cache.insert_file(write(tmp_path / "e", random_bytes(5000, 1))).close()
    unkeyed = {"DG_CACHE_ENCRYPTION_KEY": "", "DG_CACHE_KEY_FILE": ""}
    cleared = run_cli("cache", "clear", "--cache-dir", str(cache_dir), env=unkeyed)
    assert "removed 1 of 1 entries" in cleared.stdout
    missing = run_cli("cache", "info", "--cache-dir", str(tmp_path / "none"), "--json")
    assert json.loads(missing.stdout)["exists"] is False
    assert not (tmp_path / "none").exists()


def test_help_has_examples():
    for args in (["stats"], ["gc"], ["verify"], ["cache", "info"], ["cache", "clear"]):
        result = run_cli(*args, "--help")
        assert result.returncode == 0 and "Example" in result.stdout
