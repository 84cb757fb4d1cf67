"""Archive deltas through the store and a real mount (issue #14): zip and gzip series stored
as deltas of their canonical forms, read back cold byte for byte, every failure an
IntegrityError (never other bytes)."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from core import archivedelta, layout
from core.archive import zpin
from core.cache import CacheSettings, ContentCache
from core.config import DeltaSettings, delta_settings_from_env
from core.deltastore import DeltaStore
from core.errors import IntegrityError
from core.layout import Kind
from dgfs.cli import parse_o_options
from dgfs.xattrs import file_xattrs
from tests.mounting import xattr_value

WORDS = [f"w{i:03d}" for i in range(400)] + ["{", "}", '"key":', "[", "]", "\n", "true"]


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(size // 4)).encode()[:size]


def _edit(data: bytes, version: int) -> bytes:
    """`data` with a few bytes changed near its start (shifts every deflated byte after)."""
    return data[:100] + _text(100 + version, 50 + 31 * version) + data[100:]


def _zip_version(v: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, method in (
            ("pkg/a.py", _edit(_text(1, 300_000), v), zipfile.ZIP_DEFLATED),
            ("pkg/b.txt", _text(2, 4_000) + str(v).encode(), zipfile.ZIP_STORED),
            (
                "pkg/data.json.gz",
                gzip.compress(_edit(_text(3, 200_000), v), mtime=0),
                zipfile.ZIP_STORED,
            ),  # fmt: skip
            ("pkg/c.py", _text(4, 150_000), zipfile.ZIP_DEFLATED),
        ):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(info, data, compress_type=method)
    return buf.getvalue()


def _tgz_version(v: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(4):
            body = _edit(_text(10 + i, 120_000), v) if i == 1 else _text(10 + i, 120_000)
            info = tarfile.TarInfo(f"pkg-1.{v}/f{i}.txt")
            info.size, info.mtime = len(body), 1_700_000_000
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _bomb(v: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("zeros", "w") as member:
            for _ in range(200):  # 200 MiB from ~200 KB: over 64 × size + 64 MiB
                member.write(bytes(1 << 20))
        z.writestr("v", str(v))
    return buf.getvalue()


def _put_series(store: DeltaStore, tmp: Path, prefix: str, versions: list[bytes], suffix: str):
    records = []
    for i, data in enumerate(versions):
        src = tmp / f"src-{prefix}-{i}"
        src.write_bytes(data)
        records.append(store.put(src, f"{prefix}/pkg-1.{i}{suffix}"))
    return records


def _read_cold(objectstore, tmp: Path, key: str, cache=None) -> bytes:
    reader = DeltaStore(objectstore, DeltaSettings(), cache=cache, workdir=tmp / "reader")
    try:
        out = tmp / "out"
        out.unlink(missing_ok=True)
        reader.get(key, out)
        return out.read_bytes()
    finally:
        reader.close()


@pytest.fixture
def store(objectstore, tmp_path):
    s = DeltaStore(objectstore, DeltaSettings(archive_deltas=True), workdir=tmp_path / "w")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("make", "suffix", "transform"),
    [(_zip_version, ".whl", "zip+gzip"), (_tgz_version, ".tar.gz", "gzip")],
)
def test_series_stored_as_archive_deltas_and_read_back_cold(
    store, objectstore, tmp_path, make, suffix, transform
):
    versions = [make(v) for v in range(4)]
    records = _put_series(store, tmp_path, "rel", versions, suffix)
    plain = DeltaStore(objectstore, DeltaSettings(archive_deltas=False), workdir=tmp_path / "p")
    bytewise = _put_series(plain, tmp_path, "bytes", versions, suffix)
    plain.close()
    assert records[0].metadata.get(layout.META_TRANSFORM) is None  # the reference: raw
    for i, (rec, data) in enumerate(zip(records, versions, strict=True)):
        head = store.stat(rec.logical_key)
        assert head.sha256 == hashlib.sha256(data).hexdigest()  # the original file's
        if i:
            assert head.kind == Kind.DELTA
            assert head.metadata[layout.META_TRANSFORM] == transform
            assert head.metadata[layout.META_TRANSFORM_VERSION] == "1"
            assert head.metadata[layout.META_DEFLATE] == zpin.IMPLEMENTATION
            assert int(head.metadata[layout.META_INFLATED]) > 100_000
            assert head.stored_size < bytewise[i].stored_size / 3
            xattrs = file_xattrs(head)
            assert xattrs["user.dg.transform"] == transform
            assert xattrs["user.dg.inflated"] == head.metadata[layout.META_INFLATED]
            assert bytewise[i].metadata.get(layout.META_TRANSFORM) is None
        assert _read_cold(objectstore, tmp_path, rec.logical_key) == data


def test_canonical_reference_is_cached_and_a_corrupted_one_is_refused(
    store, objectstore, tmp_path, monkeypatch
):
    versions = [_zip_version(v) for v in range(3)]
    _put_series(store, tmp_path, "rel", versions, ".zip")
    with ContentCache(CacheSettings(cache_dir=tmp_path / "cache")) as cache:
        assert _read_cold(objectstore, tmp_path, "rel/pkg-1.1.zip", cache) == versions[1]
        made = []
        real = archivedelta.canonicalize
        monkeypatch.setattr(archivedelta, "canonicalize", lambda *a: made.append(a) or real(*a))
        assert _read_cold(objectstore, tmp_path, "rel/pkg-1.2.zip", cache) == versions[2]
        assert made == []  # canonical(reference) came from the cache

    def corrupt(self, canonical_sha, out, raw):  # a cache entry that went bad on disk
        real_materialise(self, canonical_sha, out, raw)
        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 1
        out.write_bytes(bytes(data))

    real_materialise = archivedelta.Canonicals.materialise
    monkeypatch.setattr(archivedelta.Canonicals, "materialise", corrupt)
    with pytest.raises(IntegrityError, match="pkg-1.2.zip.delta"):
        _read_cold(objectstore, tmp_path, "rel/pkg-1.2.zip")
    assert not (tmp_path / "out").exists()  # nothing left behind, least of all other bytes


def test_tampered_delta_or_metadata_is_refused(store, objectstore, tmp_path, monkeypatch):
    versions = [_zip_version(v) for v in range(2)]
    _put_series(store, tmp_path, "rel", versions, ".zip")
    key = "rel/pkg-1.1.zip.delta"
    info = objectstore.head(key)
    body = objectstore.get_bytes(key)
    raw_meta = dict(info.metadata)

    def read_with(data: bytes, **changed: str) -> None:
        meta = layout.decode_metadata(raw_meta)
        meta.update(changed)
        objectstore.put_bytes(key, data, layout.encode_metadata(meta))
        _read_cold(objectstore, tmp_path, "rel/pkg-1.1.zip")

    tampered = bytearray(body)
    tampered[-20] ^= 0x55
    with pytest.raises(IntegrityError):
        read_with(bytes(tampered))
    with pytest.raises(IntegrityError, match="version '2'"):
        read_with(bytes(body), **{layout.META_TRANSFORM_VERSION: "2"})
    with pytest.raises(IntegrityError, match="deflate implementation 'zlib-ng-2.2'"):
        read_with(bytes(body), **{layout.META_DEFLATE: "zlib-ng-2.2"})
    with pytest.raises(IntegrityError, match="canonical form sha256 mismatch"):
        read_with(bytes(body), **{layout.META_CANONICAL_SHA: "0" * 64})
    monkeypatch.setattr(zpin, "_load", lambda: None)
    with pytest.raises(
        IntegrityError, match=r"needs zlib-1\.3\.2: pip install cmeel-zlib==1\.3\.2"
    ):
        read_with(bytes(body))
    monkeypatch.undo()
    read_with(bytes(body))  # untouched again: reads
    assert (tmp_path / "out").read_bytes() == versions[1]


def test_zip_bomb_stored_as_today(store, objectstore, tmp_path):
    versions = [_bomb(v) for v in range(2)]
    assert len(versions[0]) < 300_000
    records = _put_series(store, tmp_path, "bomb", versions, ".zip")
    assert all(layout.META_TRANSFORM not in r.metadata for r in records)
    assert _read_cold(objectstore, tmp_path, records[1].logical_key) == versions[1]


def test_archive_deltas_off_writes_deltaglider_readable_deltas(objectstore, tmp_path):
    settings = DeltaSettings(archive_deltas=False, max_ratio=0.9)
    store = DeltaStore(objectstore, settings, workdir=tmp_path / "w")
    records = _put_series(store, tmp_path, "rel", [_zip_version(v) for v in range(2)], ".zip")
    store.close()
    assert records[1].kind == Kind.DELTA
    assert not any(k.startswith("dgfs-transform") for k in records[1].metadata)


def test_setting_from_env_and_mount_options():
    assert DeltaSettings().archive_deltas is False  # default: deltaglider-readable deltas
    assert delta_settings_from_env({"DG_ARCHIVE_DELTAS": "0"}).archive_deltas is False
    assert delta_settings_from_env({"DG_ARCHIVE_DELTAS": "on"}).archive_deltas is True
    assert (
        delta_settings_from_env({"DG_ARCHIVE_DELTAS": "1"}, archive_deltas=False).archive_deltas
        is False
    )
    assert delta_settings_from_env({}, archive_deltas="0").archive_deltas is False
    assert parse_o_options(("archive_deltas=0",)) == {"archive_deltas": "0"}
    assert parse_o_options(("no_archive_deltas",)) == {"archive_deltas": False}


def test_mount_series_read_back_cold(mounter, bucket, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    names = []
    for v in range(3):
        for make, suffix in ((_zip_version, ".whl"), (_tgz_version, ".tar.gz")):
            name = f"pkg-1.{v}{suffix}"
            (local / name).write_bytes(make(v))
            names.append(name)
    m = mounter(bucket, "mnt", "--archive-deltas")
    for sub in ("wheels", "sdists"):  # one reference per directory (deltaglider layout)
        (m.path / sub).mkdir()
    where = {n: "wheels" if n.endswith(".whl") else "sdists" for n in names}
    for name in names:
        subprocess.run(["cp", str(local / name), str(m.path / where[name] / name)], check=True)
    assert xattr_value(m.path / "wheels/pkg-1.2.whl", "user.dg.transform") == "zip+gzip"
    assert xattr_value(m.path / "sdists/pkg-1.1.tar.gz", "user.dg.transform") == "gzip"
    assert int(xattr_value(m.path / "wheels/pkg-1.2.whl", "user.dg.inflated")) > 100_000
    assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh", "-o", "archive_deltas=0", cache="cold")  # reads anyway
    for name in names:
        got = fresh.path / where[name] / name
        subprocess.run(["cmp", str(local / name), str(got)], check=True)
