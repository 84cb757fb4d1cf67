"""Writes a canonical form sequentially (hashing as it goes), holding back verbatim ranges
until a stream is inflated: a nested container in which nothing was inflated leaves no trace
and is written as one plain inflated stream instead."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from core.archive import fmt
from core.archive.zpin import Params

COPY = 1 << 20


@dataclass(frozen=True)
class _Raw:
    f: BinaryIO
    start: int
    end: int
    kept: bool  # a deflate stream left compressed


@dataclass(frozen=True)
class _Nested:
    params: Params
    kind: str


class Writer:
    """Records of one canonical form, written to `out` in order."""

    def __init__(self, out: BinaryIO, implementation: str) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self._pending: list[_Raw | _Nested] = []
        self.inflated = 0  # inflated payload bytes written
        self.kept = 0  # bytes of deflate streams written compressed
        self.kinds: list[str] = []  # containers seen through, in order of first inflation
        self._write(fmt.header(implementation))

    def raw(self, f: BinaryIO, start: int, end: int, kept: bool = False) -> None:
        """Bytes `f[start:end]` go verbatim."""
        if end > start:
            self._pending.append(_Raw(f, start, end, kept))

    def deflated(
        self, params: Params, kind: str, spool: BinaryIO, length: int, kept: int = 0
    ) -> None:
        """A stream of container `kind` whose inflated bytes are `spool[:length]`, holding
        `kept` bytes of deflate streams left compressed."""
        self._flush()
        self._see(kind)
        self._write(fmt.DEFLATED + fmt.PARAMS.pack(*params) + fmt.LENGTH.pack(length))
        self._copy(spool, 0, length)
        self.inflated += length - kept
        self.kept += kept

    def copied(self, copy: Callable[[Callable[[bytes], None]], None], kinds: tuple[str, ...],
               inflated: int) -> None:  # fmt: skip
        """A whole D or N record taken from another canonical form: `copy(write)` writes
        it; it sees through containers `kinds` and holds `inflated` payload bytes (streams
        kept compressed inside it are not counted in `kept`)."""
        self._flush()
        for kind in kinds:
            self._see(kind)
        copy(self._write)
        self.inflated += inflated

    def begin_nested(self, params: Params, kind: str) -> int:
        """A stream of container `kind` whose inflated bytes are described by the records
        that follow, up to end_nested(); returns the token to pass it."""
        self._pending.append(_Nested(params, kind))
        return len(self._pending) - 1

    def end_nested(self, token: int) -> int | None:
        """Close a nested stream: None once written; if nothing was inflated in it, nothing
        is written and the result is how many bytes of its streams were kept compressed."""
        if len(self._pending) > token and isinstance(self._pending[token], _Nested):
            kept = sum(
                r.end - r.start for r in self._pending[token:] if isinstance(r, _Raw) and r.kept
            )
            del self._pending[token:]
            return kept
        self._flush()
        self._write(fmt.END)
        return None

    def finish(self, size: int, sha256: bytes) -> str:
        """Write the trailer; returns the SHA-256 of the whole canonical form."""
        self._flush()
        self._write(fmt.TRAILER + fmt.LENGTH.pack(size) + sha256)
        return self._sha.hexdigest()

    def _see(self, kind: str) -> None:
        if kind not in self.kinds:
            self.kinds.append(kind)

    def _flush(self) -> None:
        i = 0
        while i < len(self._pending):
            item = self._pending[i]
            if isinstance(item, _Nested):
                self._see(item.kind)
                self._write(fmt.NESTED + fmt.PARAMS.pack(*item.params))
                i += 1
                continue
            run = []
            while i < len(self._pending) and isinstance(self._pending[i], _Raw):
                run.append(self._pending[i])
                i += 1
            self._write(fmt.RAW + fmt.LENGTH.pack(sum(r.end - r.start for r in run)))
            for r in run:
                self._copy(r.f, r.start, r.end - r.start)
                self.kept += (r.end - r.start) if r.kept else 0
        self._pending.clear()

    def _copy(self, f: BinaryIO, start: int, length: int) -> None:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(COPY, length))
            if not chunk:
                raise OSError(f"short read copying {length} bytes")
            self._write(chunk)
            length -= len(chunk)

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        self._out.write(data)
