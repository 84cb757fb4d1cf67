"""Finding the deflate streams of zip and gzip containers, region by region.

Every byte that is not a reproducible deflate stream goes to the writer verbatim, so the
parsers only need to find streams, never to understand or re-create container structure.
"""

from __future__ import annotations

import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core.archive.divine import Diviner
from core.archive.limits import Budget, OverLimit
from core.archive.memo import Memo
from core.archive.replay import reproduce
from core.archive.window import Window
from core.archive.writer import Writer

GZIP_MAGIC = b"\x1f\x8b\x08"
ZIP_MAGIC = b"PK\x03\x04"
SPOOL_MEMORY = 8 << 20  # inflated bytes of one stream held in memory before spilling to disk
_LOCAL = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, OverflowError)


@dataclass
class Context:
    """What every region of one input shares."""

    writer: Writer
    budget: Budget
    scratch: Path
    memo: Memo | None = None  # the reference's streams, taken as they are when unchanged
    diviners: dict[int, Diviner] = field(default_factory=dict)  # per depth: one encoder each

    def diviner(self, depth: int) -> Diviner:
        """The parameter order for streams at `depth` (a wheel's members and its nested
        .gz files come from different encoders)."""
        return self.diviners.setdefault(depth, Diviner())


def region(ctx: Context, f: BinaryIO, start: int, end: int, depth: int) -> None:
    """Write `f[start:end]`, seeing through it if it is a zip or gzip container."""
    f.seek(start)
    head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        _gzip(ctx, f, start, end, depth)
    elif (head == ZIP_MAGIC or depth == 0) and (entries := _zip_entries(ctx, f, start, end)):
        _zip(ctx, f, start, end, depth, entries)
    else:
        ctx.writer.raw(f, start, end)


def _nestable(ctx: Context, f: BinaryIO, start: int, end: int, depth: int) -> bool:
    if depth + 1 >= ctx.budget.limits.max_depth:
        return False
    f.seek(start)
    head = f.read(4)
    return head.startswith(GZIP_MAGIC) or head == ZIP_MAGIC


def _stream(ctx: Context, f: BinaryIO, start: int, limit: int, kind: str, depth: int) -> int:
    """Write the deflate stream at `start`; returns where it ended (`start` if it does not
    inflate cleanly: then nothing was written)."""
    ctx.budget.member()
    guess = limit if kind == "zip" else limit - 8  # a zip member's data; a gzip's last member
    if ctx.memo and (end := _reused(ctx, f, start, guess, kind, depth)):
        return end
    with tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=ctx.scratch) as spool:
        outcome = reproduce(f, start, limit, ctx.diviner(depth), ctx.budget, spool)
        if outcome.end is None:
            return start
        if outcome.params is None:
            ctx.writer.raw(f, start, outcome.end, kept=True)
            return outcome.end
        length, kept = spool.tell(), 0
        if _nestable(ctx, spool, 0, length, depth):
            token = ctx.writer.begin_nested(outcome.params, kind)
            region(ctx, spool, 0, length, depth + 1)
            kept = ctx.writer.end_nested(token)
            if kept is None:
                return outcome.end
        ctx.writer.deflated(outcome.params, kind, spool, length, kept)
        return outcome.end


def _reused(ctx: Context, f: BinaryIO, start: int, end: int, kind: str, depth: int) -> int | None:
    """`end` if `f[start:end]` is a stream of the reference, then written as the reference's
    record (no search, no re-deflate)."""
    assert ctx.memo is not None
    stream = ctx.memo.stream_at(f, start, end)
    if stream is None:
        return None
    ctx.budget.inflate(stream.inflated)
    ctx.diviner(depth).worked(stream.params)
    kinds = (kind,) if stream.inner is None else (kind, stream.inner)
    ctx.writer.copied(lambda write: ctx.memo.record(stream, write), kinds, stream.inflated)
    return end


def _gzip(ctx: Context, f: BinaryIO, start: int, end: int, depth: int) -> None:
    """Members one after another; whatever follows the last one (garbage, padding) verbatim."""
    pos = start
    while pos < end and (data := _gzip_header_end(f, pos, end)) is not None:
        ctx.writer.raw(f, pos, data)
        stream_end = _stream(ctx, f, data, end, "gzip", depth)
        if stream_end == data:
            pos = data
            break
        pos = min(stream_end + 8, end)  # CRC32 and ISIZE
        ctx.writer.raw(f, stream_end, pos)
    ctx.writer.raw(f, pos, end)


def _gzip_header_end(f: BinaryIO, pos: int, end: int) -> int | None:
    """Where the deflate data of the gzip member at `pos` starts; None if no member is there."""
    f.seek(pos)
    fixed = f.read(10)
    if len(fixed) < 10 or not fixed.startswith(GZIP_MAGIC) or fixed[3] & 0xE0:
        return None
    flags, pos = fixed[3], pos + 10
    if flags & _FEXTRA:
        extra = f.read(2)
        if len(extra) < 2:
            return None
        pos += 2 + int.from_bytes(extra, "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            pos = _after_zero(f, pos, end)
            if pos is None:
                return None
    if flags & _FHCRC:
        pos += 2
    return pos if pos < end else None


def _after_zero(f: BinaryIO, pos: int, end: int) -> int | None:
    f.seek(pos)
    while pos < end:
        chunk = f.read(min(4096, end - pos))
        if not chunk:
            return None
        zero = chunk.find(b"\0")
        if zero >= 0:
            return pos + zero + 1
        pos += len(chunk)
    return None


def _zip(
    ctx: Context, f: BinaryIO, start: int, end: int, depth: int, entries: list[tuple[int, int, int]]
) -> None:
    pos = start
    for data, data_end, method in entries:
        ctx.budget.member()
        ctx.writer.raw(f, pos, data)
        if method == zipfile.ZIP_DEFLATED:
            stream_end = _stream(ctx, f, data, data_end, "zip", depth)
            ctx.writer.raw(f, stream_end, data_end)
        elif method == zipfile.ZIP_STORED and _nestable(ctx, f, data, data_end, depth):
            region(ctx, f, data, data_end, depth + 1)
        else:
            ctx.writer.raw(f, data, data_end)
        pos = data_end
    ctx.writer.raw(f, pos, end)


def _zip_entries(ctx: Context, f: BinaryIO, start: int, end: int) -> list[tuple[int, int, int]]:
    """(data start, data end, method) of each member, in file order, from the central
    directory; members that overlap or point outside the region are left out (verbatim)."""
    try:
        with zipfile.ZipFile(Window(f, start, end)) as z:
            infos = z.infolist()
    except _ZIP_ERRORS:
        return []
    if len(infos) > ctx.budget.limits.max_members:
        raise OverLimit(f"more than {ctx.budget.limits.max_members} members")
    entries = []
    for info in infos:
        data = _data_start(f, start + info.header_offset, end)
        if data is not None and data + info.compress_size <= end:
            entries.append((data, data + info.compress_size, info.compress_type))
    return _non_overlapping(entries)


def _data_start(f: BinaryIO, header: int, end: int) -> int | None:
    f.seek(header)
    fixed = f.read(_LOCAL.size)
    if len(fixed) < _LOCAL.size:
        return None
    signature, name_len, extra_len = _LOCAL.unpack(fixed)
    if signature != ZIP_MAGIC:
        return None
    data = header + _LOCAL.size + name_len + extra_len
    return data if data <= end else None


def _non_overlapping(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    kept: list[tuple[int, int, int]] = []
    for entry in sorted(entries):
        if not kept or entry[0] >= kept[-1][1]:
            kept.append(entry)
    return kept
