"""rebuild(): the original bytes from a canonical form, re-deflating with the recorded
parameters (or, for a stream the reference's memo holds, copying the reference's compressed
bytes); output bounded by and checked against the recorded size and SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from core.archive import fmt
from core.archive.limits import DEFAULT_LIMITS, Limits
from core.archive.memo import Memo
from core.archive.records import Reader, Sink, open_records, stream_digest
from core.archive.zpin import Deflater
from core.errors import ArchiveError


def rebuild(
    canonical: Path, out: Path, limits: Limits = DEFAULT_LIMITS, memo: Memo | None = None
) -> None:
    """Write the original of `canonical` to `out`; ArchiveError if it is malformed, does not
    give the recorded bytes, or needs a deflate implementation this machine lacks."""
    try:
        with canonical.open("rb") as f, out.open("wb") as o:
            _rebuild(f, o, limits, memo)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def rebuilt_sha256(
    canonical: Path, limits: Limits = DEFAULT_LIMITS, memo: Memo | None = None
) -> str:
    """Rebuild `canonical` without writing it anywhere: the SHA-256 of the original it gives
    (checked against its trailer as rebuild() does); ArchiveError as rebuild()."""
    with canonical.open("rb") as f:
        return _rebuild(f, _Discard(), limits, memo)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _rebuild(f: BinaryIO, o: BinaryIO, limits: Limits, memo: Memo | None) -> str:
    reader, trailer = open_records(f)
    size = fmt.LENGTH.unpack(trailer[1:9])[0]
    if size > limits.max_inflated:
        raise ArchiveError(f"canonical form claims {size} bytes, over the limit")
    out = _Output(o, size)
    _records(reader, out.write, 0, limits.max_depth, memo)
    if reader.pos != reader.end:
        raise ArchiveError("canonical form has bytes after its records")
    if out.written != size or out.sha.digest() != trailer[9:]:
        raise ArchiveError("canonical form rebuilds to other bytes (size or sha256 mismatch)")
    return out.sha.hexdigest()


def _records(reader: Reader, sink: Sink, depth: int, max_depth: int, memo: Memo | None) -> None:
    """Records up to the end of the file (depth 0) or to the E closing a nested stream."""
    while True:
        if depth == 0 and reader.pos == reader.end:
            return
        tag = reader.take(1)
        if tag == fmt.RAW:
            reader.copy(reader.length(), sink)
        elif (
            tag in (fmt.DEFLATED, fmt.NESTED)
            and memo
            and _memo(reader, tag, sink, depth, max_depth, memo)
        ):
            continue
        elif tag == fmt.DEFLATED:
            deflater = Deflater(reader.params())
            reader.copy(reader.length(), lambda b, d=deflater: sink(d.compress(b)))
            sink(deflater.finish())
        elif tag == fmt.NESTED:
            if depth + 1 >= max_depth:
                raise ArchiveError("canonical form nests too deep")
            deflater = Deflater(reader.params())
            inner = lambda b, d=deflater: sink(d.compress(b))  # noqa: E731
            _records(reader, inner, depth + 1, max_depth, memo)
            sink(deflater.finish())
        elif tag == fmt.END and depth > 0:
            return
        else:
            raise ArchiveError(f"canonical form: unexpected record {tag!r}")


def _memo(reader: Reader, tag: bytes, sink: Sink, depth: int, max_depth: int, memo: Memo) -> bool:
    """The stream whose `tag` was just taken, from the memo if it holds its record (the
    reader left after it); else False and the reader back where it was."""
    at = reader.pos
    digest, _ = stream_digest(reader, tag, depth, max_depth)
    stream = memo.by_record(digest)
    if stream is None:
        reader.seek(at)
        return False
    memo.emit(stream, sink)
    return True


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
