"""canonicalize(): an archive's canonical form, its deflate streams seen through."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.archive import zpin
from core.archive.containers import Context, region
from core.archive.limits import DEFAULT_LIMITS, Budget, Limits, OverLimit
from core.archive.memo import Memo
from core.archive.writer import Writer

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Canonical:
    """What canonicalize() wrote: the containers seen through ("zip", "gzip", "zip+gzip"),
    inflated payload bytes, bytes of deflate streams kept compressed, and the canonical
    form's size and SHA-256."""

    transform: str
    inflated: int
    kept: int
    size: int
    sha256: str


def canonicalize(
    src: Path, out: Path, limits: Limits = DEFAULT_LIMITS, memo: Memo | None = None
) -> Canonical | None:
    """Write the canonical form of `src` to `out`; streams whose compressed bytes are those
    of a stream of the reference's `memo` take the reference's record as it is.

    None (and `out` removed) when nothing was inflated: not a zip or gzip container, no
    stream re-deflates exactly, a limit would be exceeded, or the pinned zlib is missing.
    """
    size = src.stat().st_size
    if not zpin.available() or size > limits.max_inflated:  # rebuild refuses larger ones
        return None
    digest = None
    try:
        with src.open("rb") as f, out.open("wb") as o:
            writer = Writer(o, zpin.IMPLEMENTATION)
            ctx = Context(writer, Budget(limits, size), out.parent, memo or None)
            region(ctx, f, 0, size, 0)
            if writer.inflated:
                digest = writer.finish(size, _sha256(f))
    except OverLimit:
        pass
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if digest is None:
        out.unlink(missing_ok=True)
        return None
    transform = "+".join(writer.kinds)
    return Canonical(transform, writer.inflated, writer.kept, out.stat().st_size, digest)


def _sha256(f: BinaryIO) -> bytes:
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.digest()
