"""Whether one deflate stream re-deflates bit for bit, and with which parameters.

Each candidate is tried by inflating the stream from its start and re-deflating the output
with the pinned zlib, comparing against the original compressed bytes as they come: a wrong
candidate is abandoned at the first block that differs. Buffers stay bounded whatever the
stream's size; the inflated bytes of the winning attempt are left in a spool file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from core.archive.divine import Diviner
from core.archive.limits import Budget
from core.archive.zpin import Deflater, Params

READ = 1 << 16  # compressed bytes read at a time
STEP = 1 << 16  # inflated bytes produced (and re-deflated) at a time


@dataclass(frozen=True)
class Outcome:
    """`params` that reproduce the stream (None: none do); `end`: offset just after the
    stream (None: it does not inflate cleanly before the region's end)."""

    params: Params | None
    end: int | None


class _Corrupt(Exception):
    """The stream does not inflate, or runs past the end of its region."""


class _Source:
    """Inflates one raw deflate stream of `f`, keeping the compressed bytes not yet compared."""

    def __init__(self, f: BinaryIO, start: int, limit: int, charge: _Charge) -> None:
        self._f = f
        self._limit = limit
        self._charge = charge
        self._inflater = zlib.decompressobj(-15)
        self._tail = b""
        self._read = start
        self.start = start
        self.original = bytearray()  # compressed bytes from offset start + dropped
        self.dropped = 0
        self.end: int | None = None
        self._produced = 0

    def next(self) -> bytes | None:
        """The next inflated chunk; None once the stream has ended (then `end` is set)."""
        while not self._inflater.eof:
            if not self._tail:
                self._tail = self._more()
            try:
                out = self._inflater.decompress(self._tail, STEP)
            except zlib.error as exc:
                raise _Corrupt(str(exc)) from None
            self._tail = self._inflater.unconsumed_tail
            if out:
                self._produced += len(out)
                self._charge.to(self._produced)
                return out
        if self.end is None:
            self.end = self._read - len(self._inflater.unused_data)
            del self.original[max(0, self.end - self.start - self.dropped) :]
        return None

    def drop_before(self, pos: int) -> None:
        """Forget compressed bytes before stream offset `pos` (already compared)."""
        n = pos - self.dropped
        if n > 0:
            del self.original[:n]
            self.dropped = pos

    def _more(self) -> bytes:
        n = min(READ, self._limit - self._read)
        if n <= 0:
            raise _Corrupt("stream runs past its region")
        self._f.seek(self._read)
        data = self._f.read(n)
        if not data:
            raise _Corrupt("stream truncated")
        self._read += len(data)
        self.original += data
        return data


class _Charge:
    """Charges a stream's inflated bytes to the budget once, however many attempts inflate it."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._charged = 0

    def to(self, total: int) -> None:
        if total > self._charged:
            self._budget.inflate(total - self._charged)
            self._charged = total


class _Replay:
    """Re-deflates with one parameter set and compares with the original as output comes."""

    def __init__(self, params: Params) -> None:
        self._deflater = Deflater(params)
        self._ahead = bytearray()  # produced, not yet compared
        self.pos = 0  # original bytes matched so far

    def feed(self, data: bytes, src: _Source) -> bool:
        return self._compare(self._deflater.compress(data), src)

    def finish(self, src: _Source) -> bool:
        if not self._compare(self._deflater.finish(), src):
            return False
        return not self._ahead and src.end is not None and self.pos == src.end - src.start

    def close(self) -> None:
        self._deflater.close()

    def _compare(self, produced: bytes, src: _Source) -> bool:
        self._ahead += produced
        lo = self.pos - src.dropped
        n = min(len(self._ahead), len(src.original) - lo)
        if n > 0:
            if src.original[lo : lo + n] != self._ahead[:n]:
                return False
            self.pos += n
            del self._ahead[:n]
        return True


def _attempt(
    f: BinaryIO, start: int, limit: int, params: Params, charge: _Charge, spool: BinaryIO
) -> int | None:
    """One full trial of `params`, the inflated bytes going to `spool`: the stream's end if
    it reproduces, else None. Raises _Corrupt."""
    src = _Source(f, start, limit, charge)
    replay = _Replay(params)
    try:
        while (chunk := src.next()) is not None:
            spool.write(chunk)
            if not replay.feed(chunk, src):
                return None
            src.drop_before(replay.pos)
        return src.end if replay.finish(src) else None
    finally:
        replay.close()


def _stream_end(f: BinaryIO, start: int, limit: int, charge: _Charge) -> int:
    """Where the stream ends, by inflating it. Raises _Corrupt."""
    src = _Source(f, start, limit, charge)
    while src.next() is not None:
        src.drop_before(len(src.original) + src.dropped)
    assert src.end is not None
    return src.end


def reproduce(
    f: BinaryIO, start: int, limit: int, diviner: Diviner, budget: Budget, spool: BinaryIO
) -> Outcome:
    """Find parameters that re-deflate the stream at `start` (ending by `limit`) exactly.

    On success `spool` holds the inflated bytes. Raises OverLimit past the budget.
    """
    charge = _Charge(budget)
    try:
        for params in diviner.candidates():
            spool.seek(0)
            spool.truncate()
            end = _attempt(f, start, limit, params, charge, spool)
            if end is not None:
                diviner.worked(params)
                return Outcome(params, end)
        diviner.failed()
        return Outcome(None, _stream_end(f, start, limit, charge))
    except _Corrupt:
        return Outcome(None, None)
