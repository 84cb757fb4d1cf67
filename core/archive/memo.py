"""The reference's deflate streams, for reuse (the archive-patcher idea): a stream unchanged
since the reference needs neither a parameter search nor a re-deflate.

Deflating with the pinned zlib at fixed parameters (levels 1-9) is a pure function of the
parameters and the input, so a D or N record byte-identical to one of the reference's
canonical form deflates to exactly that stream's compressed bytes in the raw reference, and
a stream whose compressed bytes equal a reference stream's has that stream's record. Streams
inside streams (a .gz member of a wheel) are remembered too, their compressed bytes kept in
a file of the memo's own. Building walks the canonical form and the raw reference together,
inflating each stream with Python's zlib to find where it ends and comparing it with its D
record's payload; any disagreement leaves the memo empty. Whatever comes of the memo is
still checked by the caller's SHA-256 of the result (the guard).
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.archive import fmt
from core.archive.limits import DEFAULT_LIMITS, Limits
from core.archive.records import Reader, open_records, stream_digest
from core.archive.zpin import Params
from core.errors import ArchiveError

READ = 1 << 16  # compressed bytes read at a time
STEP = 1 << 20  # inflated bytes produced at a time
COPY = 1 << 20
_GZIP = b"\x1f\x8b"
Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class Stream:
    """One deflate stream of the reference: where its compressed bytes lie (in the raw
    reference; `nested`: in the memo's own file, for streams inside streams), its record in
    the canonical form, the payload bytes of its D records, and the container inside it (N
    records: "gzip" or "zip"; None for D)."""

    params: Params
    start: int
    end: int
    nested: bool
    record_start: int
    record_end: int
    inflated: int
    inner: str | None


class _Mismatch(Exception):
    """The canonical form does not describe the raw reference."""


class Memo:
    """Streams of one reference by the SHA-256 of their record and of their compressed bytes.
    The two files must stay in place while the memo is used; over() gives the same memo over
    other copies of them. Safe to share between threads."""

    def __init__(self, raw: Path, canonical: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        """The memo of reference `raw` from its canonical form (empty if they disagree)."""
        self._raw = raw
        self._canonical = canonical
        self._nested = tempfile.TemporaryFile(dir=canonical.parent)  # noqa: SIM115
        streams: list[tuple[bytes, bytes, Stream]] = []
        try:
            with raw.open("rb") as r, canonical.open("rb") as c:
                reader, _ = open_records(c)
                walk = _Walk(reader, self._nested, canonical.parent, limits.max_depth, streams)
                walk.records(r, r.seek(0, 2), 0)
        except (_Mismatch, ArchiveError, zlib.error):
            streams = []
        self._by_record = {record: s for record, _, s in streams}
        self._by_compressed = {compressed: s for _, compressed, s in streams}
        self._sizes = {s.end - s.start for _, _, s in streams}

    def __len__(self) -> int:
        return len(self._by_record)

    def over(self, raw: Path, canonical: Path) -> Memo:
        """This memo over `raw` and `canonical`: copies of the files it was built from."""
        view = copy.copy(self)
        view._raw, view._canonical = raw, canonical
        return view

    def by_record(self, digest: bytes) -> Stream | None:
        """The stream whose record has SHA-256 `digest` (records.stream_digest)."""
        return self._by_record.get(digest)

    def stream_at(self, f: BinaryIO, start: int, end: int) -> Stream | None:
        """The reference stream whose compressed bytes are exactly `f[start:end]`."""
        if end - start not in self._sizes:
            return None
        return self._by_compressed.get(_range_digest(f, start, end))

    def emit(self, stream: Stream, sink: Sink) -> None:
        """The stream's compressed bytes."""
        if stream.nested:
            _pread(self._nested.fileno(), stream.start, stream.end, sink)
            return
        with self._raw.open("rb") as f:
            _copy(f, stream.start, stream.end, sink)

    def record(self, stream: Stream, sink: Sink) -> None:
        """The stream's record, from the reference's canonical form."""
        with self._canonical.open("rb") as f:
            _copy(f, stream.record_start, stream.record_end, sink)


class _Walk:
    """The canonical form's records against the bytes they describe, level by level."""

    def __init__(self, reader: Reader, nested: BinaryIO, scratch: Path, max_depth: int,
                 out: list[tuple[bytes, bytes, Stream]]) -> None:  # fmt: skip
        self.reader = reader
        self.nested = nested
        self.scratch = scratch
        self.max_depth = max_depth
        self.out = out

    def records(self, src: BinaryIO, size: int, depth: int) -> None:
        """Records up to the end (depth 0) or to the E closing a nested stream, describing
        `src[0:size]`; each stream's (record digest, compressed digest, Stream) to `out`."""
        reader, pos = self.reader, 0
        while not (depth == 0 and reader.pos == reader.end):
            record_start = reader.pos
            tag = reader.take(1)
            if tag == fmt.RAW:
                n = reader.length()
                reader.seek(reader.pos + n)
                pos += n
                continue
            if tag == fmt.END and depth > 0:
                break
            if tag == fmt.DEFLATED:
                params, digest = reader.params(), hashlib.sha256(tag)
                digest.update(fmt.PARAMS.pack(*params))
                end, inflated = _deflated(reader, src, pos, size, digest)
                record, inner = digest.digest(), None
            elif tag == fmt.NESTED and depth + 1 < self.max_depth:
                inner = _inner(reader)
                reader.seek(record_start + 1)
                params = reader.params()
                with tempfile.TemporaryFile(dir=self.scratch) as spool:
                    end = _inflate(src, pos, size, spool.write)
                    self.records(spool, spool.tell(), depth + 1)
                record_end = reader.pos
                reader.seek(record_start + 1)
                record, inflated = stream_digest(reader, tag, depth, self.max_depth)
                if reader.pos != record_end:
                    raise _Mismatch("an N record ends in two places")
            else:
                raise _Mismatch(f"unexpected record {tag!r}")
            self.out.append((record, _range_digest(src, pos, end),
                             self._stream(src, pos, end, depth, params, record_start, inflated,
                                          inner)))  # fmt: skip
            pos = end
        if pos != size:
            raise _Mismatch("the canonical form does not cover the reference")

    def _stream(self, src: BinaryIO, start: int, end: int, depth: int, params: Params,
                record_start: int, inflated: int, inner: str | None) -> Stream:  # fmt: skip
        if depth == 0:
            return Stream(params, start, end, False, record_start, self.reader.pos, inflated, inner)
        at = self.nested.seek(0, 2)
        _copy(src, start, end, self.nested.write)
        return Stream(params, at, self.nested.tell(), True, record_start, self.reader.pos,
                      inflated, inner)  # fmt: skip


def _deflated(reader: Reader, r: BinaryIO, pos: int, size: int, digest) -> tuple[int, int]:
    """Compare the D payload at the reader with the raw stream at `pos`, hashing the payload;
    (where the raw stream ends, payload length)."""
    n = reader.length()
    digest.update(fmt.LENGTH.pack(n))
    left = n

    def compare(chunk: bytes) -> None:
        nonlocal left
        if len(chunk) > left or reader.take(len(chunk)) != chunk:
            raise _Mismatch("a D payload is not the reference's stream")
        digest.update(chunk)
        left -= len(chunk)

    end = _inflate(r, pos, size, compare)
    if left:
        raise _Mismatch("a D payload is longer than the reference's stream")
    return end, n


def _inner(reader: Reader) -> str:
    """The container inside the N record at the reader (after its tag): from the first bytes
    of its first R record."""
    reader.params()
    if reader.take(1) != fmt.RAW:
        raise _Mismatch("an N record does not start with its container's header")
    head = reader.take(min(2, reader.length()))
    return "gzip" if head == _GZIP else "zip"


def _inflate(f: BinaryIO, start: int, limit: int, sink: Sink) -> int:
    """Inflate the raw deflate stream at `start` into `sink`; where it ends."""
    inflater = zlib.decompressobj(-15)
    pos = start
    while not inflater.eof:
        n = min(READ, limit - pos)
        if n <= 0:
            raise _Mismatch("a stream runs past the reference's end")
        f.seek(pos)
        data = f.read(n)
        if not data:
            raise _Mismatch("the reference is shorter than its canonical form says")
        pos += len(data)
        while data and not inflater.eof:
            sink(inflater.decompress(data, STEP))
            data = inflater.unconsumed_tail
    return pos - len(inflater.unused_data)


def _range_digest(f: BinaryIO, start: int, end: int) -> bytes:
    digest = hashlib.sha256()
    _copy(f, start, end, digest.update)
    return digest.digest()


def _pread(fd: int, start: int, end: int, sink: Sink) -> None:
    while start < end:
        chunk = os.pread(fd, min(COPY, end - start), start)
        if not chunk:
            raise ArchiveError("memo file truncated")
        sink(chunk)
        start += len(chunk)


def _copy(f: BinaryIO, start: int, end: int, sink: Sink) -> None:
    f.seek(start)
    while start < end:
        chunk = f.read(min(COPY, end - start))
        if not chunk:
            raise ArchiveError("reference changed under its memo")
        sink(chunk)
        start += len(chunk)
