"""rebuild(): the original bytes from a canonical form, re-deflating with the recorded
parameters; output bounded by and checked against the recorded size and SHA-256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.archive import fmt, zpin
from core.archive.limits import DEFAULT_LIMITS, Limits
from core.archive.zpin import Deflater, Params
from core.errors import ArchiveError

CHUNK = 1 << 20
Sink = Callable[[bytes], None]


def rebuild(canonical: Path, out: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Write the original of `canonical` to `out`; ArchiveError if it is malformed, does not
    give the recorded bytes, or needs a deflate implementation this machine lacks."""
    try:
        with canonical.open("rb") as f, out.open("wb") as o:
            _rebuild(f, o, limits)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def rebuilt_sha256(canonical: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    """Rebuild `canonical` without writing it anywhere: the SHA-256 of the original it gives
    (checked against its trailer as rebuild() does); ArchiveError as rebuild()."""
    with canonical.open("rb") as f:
        return _rebuild(f, _Discard(), limits)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _rebuild(f: BinaryIO, o: BinaryIO, limits: Limits) -> str:
    total = f.seek(0, 2)
    if total < fmt.TRAILER_SIZE:
        raise ArchiveError("canonical form truncated")
    f.seek(total - fmt.TRAILER_SIZE)
    trailer = f.read(fmt.TRAILER_SIZE)
    if trailer[:1] != fmt.TRAILER:
        raise ArchiveError("canonical form has no trailer")
    size = fmt.LENGTH.unpack(trailer[1:9])[0]
    if size > limits.max_inflated:
        raise ArchiveError(f"canonical form claims {size} bytes, over the limit")
    f.seek(0)
    reader = _Reader(f, total - fmt.TRAILER_SIZE)
    _check_header(reader)
    out = _Output(o, size)
    _records(reader, out.write, 0, limits.max_depth)
    if reader.pos != reader.end:
        raise ArchiveError("canonical form has bytes after its records")
    if out.written != size or out.sha.digest() != trailer[9:]:
        raise ArchiveError("canonical form rebuilds to other bytes (size or sha256 mismatch)")
    return out.sha.hexdigest()


def _check_header(reader: _Reader) -> None:
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


def _records(reader: _Reader, sink: Sink, depth: int, max_depth: int) -> None:
    """Records up to the end of the file (depth 0) or to the E closing a nested stream."""
    while True:
        if depth == 0 and reader.pos == reader.end:
            return
        tag = reader.take(1)
        if tag == fmt.RAW:
            reader.copy(reader.length(), sink)
        elif tag == fmt.DEFLATED:
            deflater = Deflater(reader.params())
            reader.copy(reader.length(), lambda b, d=deflater: sink(d.compress(b)))
            sink(deflater.finish())
        elif tag == fmt.NESTED:
            if depth + 1 >= max_depth:
                raise ArchiveError("canonical form nests too deep")
            deflater = Deflater(reader.params())
            _records(reader, lambda b, d=deflater: sink(d.compress(b)), depth + 1, max_depth)
            sink(deflater.finish())
        elif tag == fmt.END and depth > 0:
            return
        else:
            raise ArchiveError(f"canonical form: unexpected record {tag!r}")


class _Reader:
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


class _Output:
    """The rebuilt file: hashed, and stopped as soon as it outgrows the recorded size."""

    def __init__(self, o: BinaryIO, size: int) -> None:
        self._o = o
        self._size = size
        self.written = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self._size:
            raise ArchiveError("canonical form rebuilds past its recorded size")
        self.sha.update(data)
        self._o.write(data)
