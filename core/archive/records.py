"""Bounded reading of a canonical form's records (docs/FORMAT.md, "Archive canonical form")."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from core.archive import fmt, zpin
from core.archive.zpin import Params
from core.errors import ArchiveError

CHUNK = 1 << 20
Sink = Callable[[bytes], None]


class Reader:
    """Bounded reads of the records region `[0, end)` of a canonical form."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self._f = f
        self.end = end
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise ArchiveError("canonical form truncated")
        data = self._f.read(n)
        if len(data) != n:
            raise ArchiveError("canonical form truncated")
        self.pos += n
        return data

    def seek(self, pos: int) -> None:
        """Go back to `pos` (a position this reader has been at)."""
        self._f.seek(pos)
        self.pos = pos

    def length(self) -> int:
        return fmt.LENGTH.unpack(self.take(fmt.LENGTH.size))[0]

    def params(self) -> Params:
        params = Params(*fmt.PARAMS.unpack(self.take(fmt.PARAMS.size)))
        if not params.valid():
            raise ArchiveError(f"canonical form: invalid deflate parameters {tuple(params)}")
        return params

    def copy(self, n: int, sink: Sink) -> None:
        if self.pos + n > self.end:
            raise ArchiveError("canonical form truncated")
        while n > 0:
            chunk = self.take(min(CHUNK, n))
            sink(chunk)
            n -= len(chunk)


def open_records(f: BinaryIO) -> tuple[Reader, bytes]:
    """A reader positioned after the header of the canonical form `f`, and its trailer;
    ArchiveError if either is malformed or names a deflate implementation this machine lacks."""
    total = f.seek(0, 2)
    if total < fmt.TRAILER_SIZE:
        raise ArchiveError("canonical form truncated")
    f.seek(total - fmt.TRAILER_SIZE)
    trailer = f.read(fmt.TRAILER_SIZE)
    if trailer[:1] != fmt.TRAILER:
        raise ArchiveError("canonical form has no trailer")
    f.seek(0)
    reader = Reader(f, total - fmt.TRAILER_SIZE)
    magic = reader.take(len(fmt.MAGIC) + 2)
    if magic[:4] != fmt.MAGIC:
        raise ArchiveError("not an archive canonical form (bad magic)")
    if magic[4] != fmt.VERSION:
        raise ArchiveError(f"archive canonical form version {magic[4]} unsupported")
    implementation = reader.take(magic[5]).decode("ascii", "replace")
    if implementation != zpin.IMPLEMENTATION:
        raise ArchiveError(f"cannot rebuild: needs deflate implementation {implementation}")
    if not zpin.available():
        raise ArchiveError(f"cannot rebuild: {zpin.MISSING}")
    return reader, trailer


def stream_digest(reader: Reader, tag: bytes, depth: int, max_depth: int) -> tuple[bytes, int]:
    """SHA-256 of the D or N record whose `tag` was just taken, through its end (the reader
    is left after it), and the payload bytes of its D records: equal digests, equal records,
    equal deflate output."""
    digest = hashlib.sha256(tag)
    inflated = _hash_stream(reader, tag, digest, depth, max_depth)
    return digest.digest(), inflated


def _hash_stream(reader: Reader, tag: bytes, digest, depth: int, max_depth: int) -> int:
    digest.update(fmt.PARAMS.pack(*reader.params()))
    if tag == fmt.DEFLATED:
        return _hash_payload(reader, digest)
    if depth + 1 >= max_depth:
        raise ArchiveError("canonical form nests too deep")
    inflated = 0
    while (inner := reader.take(1)) != fmt.END:
        digest.update(inner)
        if inner == fmt.RAW:
            _hash_payload(reader, digest)
        elif inner in (fmt.DEFLATED, fmt.NESTED):
            inflated += _hash_stream(reader, inner, digest, depth + 1, max_depth)
        else:
            raise ArchiveError(f"canonical form: unexpected record {inner!r}")
    digest.update(fmt.END)
    return inflated


def _hash_payload(reader: Reader, digest) -> int:
    n = reader.length()
    digest.update(fmt.LENGTH.pack(n))
    reader.copy(n, digest.update)
    return n
