"""core.archive.memo: streams unchanged since the reference are taken from it (no search, no
re-deflate) when canonicalizing and rebuilding; a memo that does not describe its reference
never yields other bytes (it is left empty, or the SHA-256 check refuses)."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core import layout
from core.archive import ArchiveError, Memo, canonicalize, containers, rebuild, rebuilt_sha256, zpin
from core.config import DeltaSettings
from core.deltastore import DeltaStore
from core.hashing import sha256_file
from tests.mounting import xattr_value

pytestmark = pytest.mark.skipif(not zpin.available(), reason="cmeel-zlib not installed")

WORDS = [f"w{i:03d}" for i in range(400)] + ["{", "}", '"key":', "[", "]", "\n", "true"]


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(size // 4)).encode()[:size]


def zip_version(v: int, members: int = 12) -> bytes:
    """A zip of deflated members (member `v % members` changed in version v), a stored one
    and a deflated nested .gz that changes only in version 2."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(members):
            body = _text(i, 20_000 + 1_000 * i)
            if v and i == v % members:
                body = body[:500] + f"changed in {v}".encode() + body[500:]
            info = zipfile.ZipInfo(f"pkg/m{i}.json", date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(info, body, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6 + i % 4)
        nested = gzip.compress(_text(99, 60_000) + (b"v2" if v == 2 else b""), mtime=0)
        info = zipfile.ZipInfo("pkg/data.json.gz", date_time=(2024, 1, 1, 0, 0, 0))
        z.writestr(info, nested, compress_type=zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo("pkg/stored.txt", date_time=(2024, 1, 1, 0, 0, 0))
        z.writestr(info, _text(7, 3_000), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def _reference(tmp_path: Path, data: bytes) -> tuple[Path, Path, Memo]:
    raw, canon = tmp_path / "ref", tmp_path / "ref.canonical"
    raw.write_bytes(data)
    assert canonicalize(raw, canon) is not None
    return raw, canon, Memo(raw, canon)


def _count_searches(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = containers.reproduce

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(containers, "reproduce", counting)
    return calls


def test_memo_holds_every_top_level_stream(tmp_path):
    _, _, memo = _reference(tmp_path, zip_version(0))
    assert len(memo) == 14  # 12 members, the .gz member (an N record) and its gzip stream


def test_unchanged_members_copied_changed_ones_searched(tmp_path, monkeypatch):
    _, _, memo = _reference(tmp_path, zip_version(0))
    src, canon, back = tmp_path / "v2", tmp_path / "v2.canonical", tmp_path / "back"
    src.write_bytes(zip_version(2))
    searches = _count_searches(monkeypatch)
    made = canonicalize(src, canon, memo=memo)
    assert made is not None and made.transform == "zip+gzip"
    assert len(searches) == 3  # the changed member; the .gz member and the stream inside it
    rebuild(canon, back, memo=memo)
    assert back.read_bytes() == src.read_bytes()
    rebuild(canon, back)  # without the memo: every stream re-deflated, same bytes
    assert back.read_bytes() == src.read_bytes()


def test_identical_file_needs_no_deflate(tmp_path, monkeypatch):
    raw, canon_ref, memo = _reference(tmp_path, zip_version(0))
    canon = tmp_path / "same.canonical"
    searches = _count_searches(monkeypatch)
    made = canonicalize(raw, canon, memo=memo)
    assert made is not None and not searches
    assert canon.read_bytes() == canon_ref.read_bytes()

    def no_deflate(*_args, **_kwargs):
        raise AssertionError("re-deflated a stream the memo holds")

    monkeypatch.setattr(sys.modules["core.archive.rebuild"], "Deflater", no_deflate)
    assert rebuilt_sha256(canon, memo=memo) == sha256_file(raw)


def test_memo_of_another_reference_is_empty(tmp_path):
    raw, canon, _ = _reference(tmp_path, zip_version(0))
    raw.write_bytes(zip_version(1))  # the canonical form no longer describes it
    assert len(Memo(raw, canon)) == 0
    raw.write_bytes(zip_version(0)[:-100])
    assert len(Memo(raw, canon)) == 0


def test_corrupt_reference_never_gives_other_bytes(tmp_path):
    raw, _, memo = _reference(tmp_path, zip_version(0))
    src, canon, back = tmp_path / "v1", tmp_path / "v1.canonical", tmp_path / "back"
    src.write_bytes(zip_version(1))
    assert canonicalize(src, canon, memo=memo) is not None
    data = bytearray(raw.read_bytes())
    for i in range(200, len(data) - 200, 997):  # the raw reference rots after the memo
        data[i] ^= 0x55
    raw.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="sha256 mismatch"):
        rebuild(canon, back, memo=memo)
    assert not back.exists()
    rebuild(canon, back)  # the canonical form itself is sound
    assert back.read_bytes() == src.read_bytes()


def _mount_zip(v: int) -> bytes:
    """zip_version(v) plus one large member edited near its start in every version (its
    deflated bytes all change: the byte delta is large, so the archive delta is tried)."""
    buf = io.BytesIO(zip_version(v))
    with zipfile.ZipFile(buf, "a") as z:
        big = _text(50, 400_000)
        info = zipfile.ZipInfo("pkg/big.json", date_time=(2024, 1, 1, 0, 0, 0))
        z.writestr(info, big[:100] + f"version {v}".encode() * (v + 1) + big[100:],
                   compress_type=zipfile.ZIP_DEFLATED)  # fmt: skip
    return buf.getvalue()


def test_mount_zip_series_read_back_cold(mounter, bucket, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    names = [f"pkg-1.{v}.whl" for v in range(3)]
    for v, name in enumerate(names):
        (local / name).write_bytes(_mount_zip(v))
    m = mounter(bucket, "mnt", "--archive-deltas")
    for name in names:
        subprocess.run(["cp", str(local / name), str(m.path / name)], check=True)
    for name in names[1:]:
        assert xattr_value(m.path / name, "user.dg.transform") == "zip+gzip"
    assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh", cache="cold")
    for name in reversed(names):
        subprocess.run(["cmp", str(local / name), str(fresh.path / name)], check=True)


def test_store_read_survives_a_memo_giving_wrong_bytes(objectstore, tmp_path, monkeypatch):
    settings = DeltaSettings(archive_deltas=True)
    store = DeltaStore(objectstore, settings, workdir=tmp_path / "w")
    versions = [_mount_zip(v) for v in range(2)]
    try:
        for v, data in enumerate(versions):
            (tmp_path / f"v{v}").write_bytes(data)
            record = store.put(tmp_path / f"v{v}", f"rel/pkg-1.{v}.whl")
    finally:
        store.close()
    assert record.metadata[layout.META_TRANSFORM] == "zip+gzip"

    emitted: list[int] = []

    def rotten(self, stream, sink):
        emitted.append(stream.end - stream.start)
        sink(b"\0" * (stream.end - stream.start))

    monkeypatch.setattr(Memo, "emit", rotten)
    reader = DeltaStore(objectstore, settings, workdir=tmp_path / "r")
    try:
        reader.get("rel/pkg-1.1.whl", tmp_path / "out")  # the rebuild is retried without memo
    finally:
        reader.close()
    assert emitted  # the memo was used, and its bytes refused
    assert (tmp_path / "out").read_bytes() == versions[1]
