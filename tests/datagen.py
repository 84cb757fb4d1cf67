"""Deterministic test data: version series, random files."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import subprocess
import tarfile
from pathlib import Path


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def version_series(count: int, size: int, seed: int = 1) -> list[bytes]:
    """`count` versions of one artefact: each changes a few small regions of the previous."""
    rng = random.Random(seed)
    current = bytearray(rng.randbytes(size))
    versions = [bytes(current)]
    for _ in range(count - 1):
        for _ in range(4):
            at = rng.randrange(0, max(1, size - 600))
            current[at : at + 500] = rng.randbytes(500)
        versions.append(bytes(current))
    return versions


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


COMPRESSED_SUFFIXES = (
    ".tar.gz", ".tgz", ".gz", ".tar.bz2", ".bz2", ".xz", ".tar.xz", ".lzma", ".Z"
)  # fmt: skip


def text_blob(size: int, seed: int) -> bytes:
    """Compressible, source-like text of about `size` bytes."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(400)]
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def compressed_series(suffix: str, count: int, size: int = 600_000, seed: int = 7) -> list[bytes]:
    """`count` versions of one compressed artefact (`suffix` from COMPRESSED_SUFFIXES): each
    rewrites a few lines near the end of the content, as a version bump does."""
    base = text_blob(size, seed)
    contents = [base[:-64] + (b"release %04d\n" % i).ljust(64, b"#") for i in range(count)]
    if suffix.startswith((".tar", ".tgz")):
        contents = [_tar({"pkg/README": b"readme\n", "pkg/src.txt": c}) for c in contents]
    return [compress(suffix, c) for c in contents]


def compress(suffix: str, data: bytes) -> bytes:
    """`data` compressed as a file named `*suffix` would be (`.Z` needs the `compress` tool)."""
    if suffix.endswith(("gz", ".tgz")):
        return gzip.compress(data, mtime=0)
    if suffix.endswith("bz2"):
        return bz2.compress(data)
    if suffix.endswith("xz"):
        return lzma.compress(data)
    if suffix == ".lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if suffix == ".Z":
        return subprocess.run(
            ["compress", "-c"], input=data, capture_output=True, check=True
        ).stdout
    raise ValueError(suffix)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
