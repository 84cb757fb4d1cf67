"""Stream links of the `adaptive` policy: one xdelta3 decode per hidden reference (dgfs-only).

A *stream* is a raw root hidden reference followed by links, each naming the previous one (or
the root) as `dgfs-chain-parent`. The body of link k is the xdelta3 delta of its content
against the link's *source*: the root's content followed by the stored bodies (the VCDIFF
bytes, not their decoded content) of links 1 … k-1, in that order. xdelta3 keeps the bytes a
version adds in its delta's data section (incompressible ones, as in zip or wheel files,
verbatim even with xdelta3's default LZMA secondary compression), so a later version finds
an earlier version's new bytes inside those bodies, while materialising any link is still a
single decode. Every part of a source is checked against a sha256 (the root's
`dg-file-sha256`, a link's `dgfs-body-sha256`) before use. Writers add at most
MAX_STREAM_LINKS links to a stream; readers refuse a longer walk (or a cycle) as an integrity
error.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import layout
from core.errors import IntegrityError
from core.layout import ObjectRecord

MAX_STREAM_LINKS = 32
HEAD_MEMORY = 10_000  # hidden reference records remembered per store (then forgotten at once)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Part:
    """One hidden reference of a stream: its content sha256, and what is stored (the root's
    raw content, a link's delta body) with its sha256, size and metadata."""

    key: str
    sha256: str
    body_sha256: str
    size: int
    metadata: dict[str, str]


class HiddenHeads:
    """HEADs of hidden references, remembered by key (a stream is walked on every read and
    put). Safe to keep: a hidden reference's key names its content and its body never changes
    (a collector restores the same bytes), and every byte read through a record is checked
    against a sha256, so a stale record can only end in an IntegrityError, never wrong bytes."""

    def __init__(self, head: Callable[[str], ObjectRecord]) -> None:
        self._head = head
        self._records: dict[str, ObjectRecord] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str) -> ObjectRecord:
        """The record of `key` (HEAD once; NotFound if gone, not remembered)."""
        with self._lock:
            known = self._records.get(key)
        if known is None:
            known = self._head(key)
            self.remember(known)
        return known

    def remember(self, rec: ObjectRecord) -> None:
        with self._lock:
            if len(self._records) >= HEAD_MEMORY:
                self._records.clear()
            self._records[rec.stored_key] = rec

    def forget(self) -> None:
        with self._lock:
            self._records.clear()


def parts(head: Callable[[str], ObjectRecord], key: str, sha256: str) -> list[Part]:
    """The stream ending at hidden reference `key` (content `sha256`), root first: the source a
    link on `key` is encoded against. `head` returns a key's record (NotFound if gone).

    IntegrityError when a reference does not hold the content its child expects, the stream
    passes through a chain reference that is not a stream link, or it is too long (or cyclic).
    """
    out: list[Part] = []
    while True:
        rec = head(key)
        if rec.sha256 != sha256:
            raise IntegrityError(f"{key}: holds {rec.sha256}, its stream expects {sha256}")
        meta = rec.metadata
        parent = layout.chain_parent(meta)
        if parent is None:
            out.append(Part(key, sha256, sha256, rec.stored_size, meta))
            return out[::-1]
        if not layout.is_stream_link(meta):
            raise IntegrityError(f"{key}: a stream cannot pass through a non-stream chain link")
        body_sha = meta.get(layout.META_BODY_SHA, "")
        if not _SHA256.fullmatch(body_sha):
            raise IntegrityError(f"{key}: stream link without a valid {layout.META_BODY_SHA}")
        if len(out) >= MAX_STREAM_LINKS or any(p.key == key for p in out):
            raise IntegrityError(f"{key}: stream longer than {MAX_STREAM_LINKS} links (or a cycle)")
        out.append(Part(key, sha256, body_sha, rec.stored_size, meta))
        key, sha256 = parent


def fetch_parts(store, stream: list[Part], tmp: Path, producing: str = "") -> list[Path]:
    """Each part's stored bytes, verified, as files under `tmp`, through the store's cache
    except a part whose bytes are `producing`, the cache entry being filled by the caller
    (waiting on it would never end)."""
    paths = []
    for i, part in enumerate(stream):
        path = tmp / f"part{i}"
        store.stored_file(part.key, part.body_sha256, path, part.body_sha256 != producing)
        paths.append(path)
    return paths


def concat(paths: list[Path], out: Path) -> None:
    """Write the files `paths` one after the other to `out`."""
    with out.open("wb") as dst:
        for path in paths:
            with path.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def write_source(store, head: Callable[[str], ObjectRecord], parent: tuple[str, str],
                 out: Path, tmp: Path, producing: str) -> None:  # fmt: skip
    """Into `out`, the source of the stream link with content `producing` whose parent is
    `parent` (key, sha256)."""
    concat(fetch_parts(store, parts(head, *parent), tmp, producing), out)
