"""core.archive: canonical forms of zip and gzip archives round-trip byte for byte.

Pure unit tests (no server): canonicalize -> rebuild must give the original bytes or decline
(None); a corrupted canonical form must raise, never rebuild other bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import struct
import subprocess
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from core import codec
from core.archive import DEFAULT_LIMITS, ArchiveError, Limits, canonicalize, rebuild, zpin

WORDS = [f"w{i:03d}" for i in range(500)] + ["{", "}", '"key":', "[", "]", "\n", "true"]


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = []
    total = 0
    while total < size:
        word = rng.choice(WORDS)
        out.append(word)
        total += len(word) + 1
    return " ".join(out).encode()[:size]


def _round_trip(tmp_path: Path, data: bytes, limits: Limits = DEFAULT_LIMITS):
    src, canon, back = tmp_path / "src", tmp_path / "canon", tmp_path / "back"
    src.write_bytes(data)
    result = canonicalize(src, canon, limits)
    if result is None:
        assert not canon.exists()
        return None
    assert result.sha256 == hashlib.sha256(canon.read_bytes()).hexdigest()
    assert result.size == canon.stat().st_size
    rebuild(canon, back, limits)
    assert back.read_bytes() == data
    return result


def _zip(members: dict[str, tuple[bytes, int]], level: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, (data, method) in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # not the clock
            z.writestr(info, data, compress_type=method, compresslevel=level)
    return buf.getvalue()


def _gzip_member(payload: bytes, deflated: bytes, flags: int = 0, mtime: int = 0) -> bytes:
    header = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, flags, mtime, 0, 3)
    if flags & 4:
        header += struct.pack("<H", 5) + b"extra"
    if flags & 8:
        header += b"name.json\0"
    if flags & 16:
        header += b"a comment\0"
    if flags & 2:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    trailer = struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF)
    return header + deflated + trailer


def _deflate(data: bytes, level: int = 6, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    return c.compress(data) + c.flush()


def test_zip_stored_and_deflated_members(tmp_path):
    data = _zip(
        {
            "a.txt": (_text(1, 50_000), zipfile.ZIP_DEFLATED),
            "b.bin": (_text(2, 3_000), zipfile.ZIP_STORED),
            "empty": (b"", zipfile.ZIP_DEFLATED),
            "c.txt": (_text(3, 200_000), zipfile.ZIP_DEFLATED),
        }
    )
    result = _round_trip(tmp_path, b"#!/bin/sh prepended\n" + data + b"")
    assert result.transform == "zip"
    assert result.inflated >= 250_000 and result.kept == 0


def test_zip_levels_divined(tmp_path):
    zips = [_zip({"a": (_text(4, 300_000), zipfile.ZIP_DEFLATED)}, level) for level in (1, 6, 9)]
    assert len(set(zips)) == 3
    for data in zips:
        result = _round_trip(tmp_path, data)
        assert result is not None and result.kept == 0


def test_zip64(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            with z.open(f"m{i}", "w", force_zip64=True) as member:
                member.write(_text(10 + i, 40_000))
    data = buf.getvalue()
    assert b"\x01\x00\x10\x00" in data  # the zip64 extra field
    assert _round_trip(tmp_path, data).transform == "zip"


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.buf += b
        return len(b)


def test_zip_data_descriptors(tmp_path):
    stream = _Unseekable()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a", _text(20, 80_000))
        z.writestr("b", _text(21, 10_000))
    data = bytes(stream.buf)
    assert struct.unpack("<H", data[6:8])[0] & 0x08  # general purpose bit 3: data descriptor
    assert _round_trip(tmp_path, data).transform == "zip"


def test_nested_gzip_members(tmp_path):
    inner = gzip.compress(_text(30, 120_000), mtime=0)
    data = _zip(
        {
            "x.json.gz": (inner, zipfile.ZIP_DEFLATED),
            "y.json.gz": (gzip.compress(_text(31, 5_000), mtime=0), zipfile.ZIP_STORED),
            "z.py": (_text(32, 20_000), zipfile.ZIP_DEFLATED),
        }
    )
    result = _round_trip(tmp_path, data)
    assert result.transform == "zip+gzip"
    assert result.inflated >= 145_000 and result.kept == 0


def test_multi_member_gzip_with_trailing_garbage(tmp_path):
    data = gzip.compress(_text(40, 60_000)) + gzip.compress(_text(41, 60_000)) + b"\0" * 100
    result = _round_trip(tmp_path, data)
    assert result.transform == "gzip" and result.inflated == 120_000


@pytest.mark.parametrize("flags", [4 | 8 | 16, 2 | 4 | 8 | 16, 8])
def test_gzip_optional_header_fields(tmp_path, flags):
    payload = _text(50, 90_000)
    data = _gzip_member(payload, _deflate(payload, 9), flags, mtime=1_700_000_000)
    assert gzip.decompress(data) == payload
    assert _round_trip(tmp_path, data).inflated == len(payload)


def test_tar_gz(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(5):
            body = _text(60 + i, 30_000)
            info = tarfile.TarInfo(f"pkg/f{i}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    result = _round_trip(tmp_path, buf.getvalue())
    assert result.transform == "gzip" and result.inflated > 150_000


def test_stream_that_does_not_redeflate_stays_compressed(tmp_path):
    odd = _text(70, 80_000)
    huffman = _gzip_member(odd, _deflate(odd, 6, zlib.Z_HUFFMAN_ONLY))
    plain = gzip.compress(_text(71, 50_000), mtime=0)
    result = _round_trip(tmp_path, huffman + plain)
    assert result.inflated == 50_000
    assert result.kept == len(_deflate(odd, 6, zlib.Z_HUFFMAN_ONLY))
    assert _round_trip(tmp_path, huffman) is None  # nothing to inflate: stored as today


def test_not_an_archive(tmp_path):
    assert _round_trip(tmp_path, _text(80, 10_000)) is None
    assert _round_trip(tmp_path, b"") is None
    assert _round_trip(tmp_path, b"PK\x03\x04garbage" * 100) is None
    assert _round_trip(tmp_path, b"\x1f\x8b\x08\x00garbage") is None


def test_truncated_and_corrupt_archives_never_give_other_bytes(tmp_path):
    inner = gzip.compress(_text(90, 30_000), mtime=0)
    data = _zip({"a": (_text(91, 40_000), zipfile.ZIP_DEFLATED), "b.gz": (inner, 8)})
    gz = gzip.compress(_text(92, 40_000)) * 2
    rng = random.Random(93)
    for original in (data, gz):
        for cut in (10, len(original) // 3, len(original) - 30, len(original) - 1):
            _round_trip(tmp_path, original[:cut])
        for _ in range(6):
            mutated = bytearray(original)
            mutated[rng.randrange(len(mutated))] ^= 0x5A
            _round_trip(tmp_path, bytes(mutated))


def _canonical(tmp_path: Path) -> bytes:
    data = _zip({"a": (_text(100, 50_000), 8), "b.gz": (gzip.compress(_text(101, 9_000)), 8)})
    assert _round_trip(tmp_path, data) is not None
    return (tmp_path / "canon").read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c[: len(c) // 2],
        lambda c: c[:-1],
        lambda c: c + b"R",
        lambda c: b"XXXX" + c[4:],
        lambda c: c[:4] + b"\x09" + c[5:],
        lambda c: c[:6] + b"zlib-9.9.9" + c[16:],
        lambda c: c[:200] + bytes([c[200] ^ 1]) + c[201:],
        lambda c: c[:-20] + bytes([c[-20] ^ 1]) + c[-19:],
        lambda c: c[:16] + b"D\x0f\x08\xf1\x00" + c[21:],
    ],
)
def test_rebuild_of_damaged_canonical_raises(tmp_path, damage):
    bad = tmp_path / "bad"
    bad.write_bytes(damage(_canonical(tmp_path)))
    with pytest.raises(ArchiveError):
        rebuild(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rebuild_refuses_without_pinned_zlib(tmp_path, monkeypatch):
    canon = _canonical(tmp_path)
    (tmp_path / "c").write_bytes(canon)
    monkeypatch.setattr(zpin, "_load", lambda: None)
    with pytest.raises(ArchiveError, match=r"zlib-1\.3\.2 not available \(pip install cmeel-zlib"):
        rebuild(tmp_path / "c", tmp_path / "out")
    assert canonicalize(tmp_path / "src", tmp_path / "c2") is None


def test_zip_bomb_declined_within_limits(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("zeros", "w") as member:
            block = bytes(1 << 20)
            for _ in range(48):
                member.write(block)
    bomb = buf.getvalue()
    assert len(bomb) < 300_000
    limits = Limits(inflate_ratio=64, inflate_slack=1 << 20)
    started = time.monotonic()
    assert _round_trip(tmp_path, bomb, limits) is None
    assert time.monotonic() - started < 10
    assert DEFAULT_LIMITS.inflate_cap(1 << 20) == 128 << 20
    assert DEFAULT_LIMITS.inflate_cap(1 << 40) == DEFAULT_LIMITS.max_inflated


def test_member_and_depth_limits(tmp_path):
    many = _zip({f"m{i}": (_text(i, 2_000), 8) for i in range(20)})
    assert _round_trip(tmp_path, many, Limits(max_members=5)) is None
    nested = _zip({"x.gz": (gzip.compress(_text(110, 50_000), mtime=0), 8)})
    assert _round_trip(tmp_path, nested, Limits(max_depth=1)).transform == "zip"


def _delta_size(tmp_path: Path, reference: Path, target: Path) -> int:
    out = tmp_path / f"{target.name}.delta"
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    return codec.encode(reference, target, out, sha)


def _series_deltas(tmp_path: Path, old: bytes | Path, new: bytes | Path) -> tuple[int, int]:
    """(raw delta size, canonical delta size) of two versions of an archive."""
    paths = []
    for name, version in (("old", old), ("new", new)):
        path = tmp_path / name
        path.write_bytes(version if isinstance(version, bytes) else version.read_bytes())
        canon = tmp_path / f"{name}.canon"
        assert canonicalize(path, canon) is not None
        rebuild(canon, tmp_path / f"{name}.back")
        assert (tmp_path / f"{name}.back").read_bytes() == path.read_bytes()
        paths.append((path, canon))
    (old_raw, old_canon), (new_raw, new_canon) = paths
    return (
        _delta_size(tmp_path, old_raw, new_raw),
        _delta_size(tmp_path, old_canon, new_canon),
    )


def test_canonical_delta_of_similar_zips_is_much_smaller(tmp_path):
    members = {f"pkg/m{i:03d}.py": (_text(i, 20_000), 8) for i in range(60)}
    old = _zip(members)
    changed = bytearray(members["pkg/m010.py"][0])
    changed[5_000:5_010] = b"0123456789"
    members["pkg/m010.py"] = (bytes(changed), 8)
    raw, canonical = _series_deltas(tmp_path, old, _zip(members))
    assert canonical * 10 < raw, (raw, canonical)


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip binary")
def test_gnu_gzip_output_round_trips(tmp_path):
    text = tmp_path / "t.json"
    text.write_bytes(_text(120, 400_000))
    subprocess.run(["gzip", "-9", "-k", "-f", str(text)], check=True)
    data = (tmp_path / "t.json.gz").read_bytes()
    result = _round_trip(tmp_path, data)
    assert result is None or result.inflated + result.kept > 0


def test_zip_inside_gzip_and_stored_zip_inside_zip(tmp_path):
    inner = _zip({"a.txt": (_text(130, 60_000), 8), "b.txt": (_text(131, 60_000), 8)})
    result = _round_trip(tmp_path, gzip.compress(inner, mtime=0))
    assert result.transform == "gzip+zip" and result.kept == 0
    outer = _zip({"lib/inner.jar": (inner, zipfile.ZIP_STORED), "c": (_text(132, 9_000), 8)})
    assert _round_trip(tmp_path, outer).transform == "zip"


def test_rebuild_bounds_nesting(tmp_path):
    _canonical(tmp_path)  # a zip holding a .gz: one nested record
    with pytest.raises(ArchiveError, match="nests too deep"):
        rebuild(tmp_path / "canon", tmp_path / "out", Limits(max_depth=1))


def test_pinned_deflate_output_does_not_depend_on_chunking():
    """canonicalize feeds inflated bytes in pieces of varying size, rebuild in 1 MiB pieces."""
    data = _text(140, 150_000) + random.Random(141).randbytes(60_000) + bytes(50_000)
    rng = random.Random(142)
    for level in (1, 4, 6, 9):
        for mem_level in (8, 9):
            whole = zpin.Deflater(zpin.Params(level, mem_level))
            expected = whole.compress(data) + whole.finish()
            pieces = zpin.Deflater(zpin.Params(level, mem_level))
            out, pos = [], 0
            while pos < len(data):
                n = rng.choice([7, 100, 4096, rng.randrange(1, 50_000)])
                out.append(pieces.compress(data[pos : pos + n]))
                pos += n
            assert b"".join(out) + pieces.finish() == expected, (level, mem_level)
