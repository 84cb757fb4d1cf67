"""Every container type of issue #14 written through a real mount with `--archive-deltas`
and read back cold: two versions per deltaspace (the second changes every deflate stream, so
its byte delta is large and an archive delta is tried), each compared byte for byte through a
fresh mount with an empty cache. Reproducible containers must be stored as archive deltas
(`user.dg.transform`); the rest (a stream that does not re-deflate, truncated or corrupt
archives, a zip bomb) are stored as they would be without the option."""

from __future__ import annotations

import gzip
import io
import random
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from tests.mounting import xattr_value
from tests.test_archive import _Unseekable

WORDS = [f"w{i:03d}" for i in range(400)] + ["{", "}", '"key":', "[", "]", "\n", "true"]


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(size // 4)).encode()[:size]


def _doc(seed: int, size: int, v: int) -> bytes:
    """Text of `size` bytes; version `v` inserts a few bytes near the start (every deflated
    byte after the insertion shifts)."""
    data = _text(seed, size)
    return data[:64] + _text(1000 + seed + v, 20 + 13 * v) + data[64:]


def _zip_bytes(members, zip64: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            with z.open(info, "w", force_zip64=zip64) as member:
                member.write(data)
    return buf.getvalue()


def _zip_stored_and_deflated(v: int) -> bytes:
    return _zip_bytes(
        [
            ("a.txt", _doc(1, 120_000, v), zipfile.ZIP_DEFLATED),
            ("b.bin", _doc(2, 5_000, v), zipfile.ZIP_STORED),
            ("c.txt", _doc(3, 80_000, v), zipfile.ZIP_DEFLATED),
        ]
    )


def _zip64(v: int) -> bytes:
    members = [(f"m{i}", _doc(10 + i, 60_000, v), zipfile.ZIP_DEFLATED) for i in range(3)]
    return _zip_bytes(members, zip64=True)


def _zip_data_descriptors(v: int) -> bytes:
    stream = _Unseekable()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a", _doc(20, 120_000, v))
        z.writestr("b", _doc(21, 40_000, v))
    data = bytes(stream.buf)
    assert struct.unpack("<H", data[6:8])[0] & 0x08  # bit 3: sizes in a data descriptor
    return data


def _zip_nested_gzip(v: int) -> bytes:
    return _zip_bytes(
        [
            ("x.json.gz", gzip.compress(_doc(30, 150_000, v), mtime=0), zipfile.ZIP_DEFLATED),
            ("y.json.gz", gzip.compress(_doc(31, 40_000, v), mtime=0), zipfile.ZIP_STORED),
            ("z.py", _doc(32, 60_000, v), zipfile.ZIP_DEFLATED),
        ]
    )


def _multi_member_gzip(v: int) -> bytes:
    return gzip.compress(_doc(40, 100_000, v), mtime=0) + gzip.compress(_doc(41, 80_000, v))


def _gzip_header_fields(v: int) -> bytes:
    payload = _doc(50, 150_000, v)
    flags = 2 | 4 | 8 | 16  # FHCRC FEXTRA FNAME FCOMMENT
    header = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, flags, 1_700_000_000, 2, 3)
    header += struct.pack("<H", 5) + b"extra" + b"name.json\0" + b"a comment\0"
    header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(payload) + c.flush()
    data = header + body + struct.pack("<II", zlib.crc32(payload), len(payload))
    assert gzip.decompress(data) == payload
    return data


def _tar_gz(v: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(4):
            body = _doc(60 + i, 50_000, v)
            info = tarfile.TarInfo(f"pkg/f{i}.txt")
            info.size = len(body)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _huffman_only(v: int) -> bytes:
    """A gzip whose deflate stream zlib's default strategies never reproduce."""
    payload = _doc(70, 150_000, v)
    c = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)
    body = c.compress(payload) + c.flush()
    header = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, 0, 3)
    return header + body + struct.pack("<II", zlib.crc32(payload), len(payload))


def _truncated(v: int) -> bytes:
    data = _zip_nested_gzip(v)
    return data[: len(data) * 2 // 3]


def _corrupt(v: int) -> bytes:
    data = bytearray(_tar_gz(v))
    for at in range(200, len(data), 9_973):  # flipped bits inside the deflate stream
        data[at] ^= 0x5A
    return bytes(data)


def _zip_bomb(v: int) -> bytes:
    """~200 MiB of zeros in ~200 KB: past the default inflate cap (64 × size + 64 MiB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("note", _doc(80, 2_000, v))
        with z.open("zeros", "w") as member:
            block = bytes(1 << 20)
            for _ in range(200):
                member.write(block)
    return buf.getvalue()


Maker = Callable[[int], bytes]
# name → (maker, file name, transform expected on the second version; "" = none)
CASES: dict[str, tuple[Maker, str, str]] = {
    "zip-stored-deflated": (_zip_stored_and_deflated, "pkg.zip", "zip"),
    "zip64": (_zip64, "big.zip", "zip"),
    "zip-data-descriptors": (_zip_data_descriptors, "streamed.jar", "zip"),
    "zip-nested-gzip": (_zip_nested_gzip, "pkg.whl", "zip+gzip"),
    "gzip-multi-member": (_multi_member_gzip, "log.gz", "gzip"),
    "gzip-header-fields": (_gzip_header_fields, "data.json.gz", "gzip"),
    "tar-gz": (_tar_gz, "pkg.tar.gz", "gzip"),
    "no-redeflate": (_huffman_only, "odd.gz", ""),
    "truncated": (_truncated, "cut.zip", ""),
    "corrupt": (_corrupt, "bad.tgz", ""),
    "zip-bomb": (_zip_bomb, "bomb.zip", ""),
}


def test_every_container_type_through_a_mount_read_back_cold(mounter, bucket, tmp_path):
    local = tmp_path / "local"
    files: list[tuple[str, Path]] = []  # (path in the mount, local original)
    for case, (make, name, _) in CASES.items():
        for v in (0, 1):
            src = local / case / f"v{v}-{name}"
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(make(v))
            files.append((f"{case}/v{v}-{name}", src))

    m = mounter(bucket, "mnt", "--archive-deltas")
    for case in CASES:
        (m.path / case).mkdir()  # a deltaspace each: v0 is its reference
    for rel, src in files:
        subprocess.run(["cp", str(src), str(m.path / rel)], check=True)
    for case, (_, name, transform) in CASES.items():
        got = xattr_value(m.path / case / f"v1-{name}", "user.dg.transform")
        if transform:
            assert got == transform, case
            assert int(xattr_value(m.path / case / f"v1-{name}", "user.dg.inflated") or 0) > 0, case
        else:
            assert got is None, case  # stored as without the option
    assert m.umount().returncode == 0

    cold = mounter(bucket, "fresh", cache="cold-cache")  # fresh cache: every byte from S3
    for rel, src in files:
        subprocess.run(["cmp", str(src), str(cold.path / rel)], check=True)
