"""The `adaptive` reference policy: hidden references in xdelta3 streams (dgfs-only).

Hidden references live at `{prefix}/.dgfs/refs/<stamp>-<sha16>/reference.bin`: a *root* is
stored raw; a *stream link* is an xdelta3 delta against its stream's source, the root's
content followed by the stored bodies of the links before it (core/policies/stream.py). A link names
the previous link, or the root, as `dgfs-chain-parent`, so the collector keeps all of a live
link's stream. Materialising any hidden reference is at most one decode, so reading any file
takes at most 2 sequential decodes (its hidden reference's, then its own). User files only
ever point at hidden references, never at each other, so deleting a file never breaks
another.

Per file (online): the *tip*, the newest root or stream link of the file's family (the name
before its first digit, and suffix) among the `scan` newest hidden references, else the
newest, is extended: a bounded encode against the tip's stream, and the file becomes a new
link on the tip, its user file a zero-diff self-delta against that link. A new raw root
instead when nothing is related, the delta exceeds `threshold` × the file, or the stream is
full (its source would pass `budget` × the root's size, at least MIN_BUDGET, at most
codec.max_source_window(), or it has MAX_STREAM_LINKS links). Two writers extending one tip
fork the stream: both links are valid, later files extend the newer one.

Links written by earlier dgfs versions (deltas against their parent's decoded content, without
`dgfs-chain-mode`) still read, at most MAX_DECODES decodes; new links never extend them.

deltaglider can only read the files whose reference is a root: for a link it fetches the raw
body, whose sha256 does not match `dg-ref-sha256`, and fails.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core import codec, layout
from core.cache import NotCacheable
from core.eligibility import looks_related, sniff, suffix_of
from core.errors import IntegrityError, NotFound, PreconditionFailed
from core.hashing import sha256_file
from core.layout import ObjectRecord
from core.policies import stream
from core.policies.base import Candidate, ReferencePolicy
from core.policies.hidden import (
    collect_keyframes,
    current_ref_key,
    hidden_reference_keys,
    is_keyframe_key,
    keyframe_base,
)
from core.policies.stream import Part

log = logging.getLogger("dgfs.policies")

STREAM_NOTE = "dgfs stream reference (xdelta3 delta against its stream source)"
MIN_BUDGET = 16 * 2**20  # a stream's source may always grow to this many bytes


@dataclass(frozen=True)
class Extension:
    """A stream extended by one link: its parts (root first), their local copies, the delta."""

    parts: list[Part]
    paths: list[Path]
    delta: Path


def _family(name: str) -> tuple[str, str]:
    """What versions of one series share: the name before its first digit, and its suffix."""
    return re.match(r"[^0-9]*", name).group(), suffix_of(name)


def _extendable(rec: ObjectRecord) -> bool:
    """A root or a stream link (a link of an older chain cannot start a stream)."""
    return layout.chain_parent(rec.metadata) is None or layout.is_stream_link(rec.metadata)


class AdaptivePolicy(ReferencePolicy):
    """Hidden references in streams, one decode each; see the module docstring."""

    name = "adaptive"

    def __init__(self, threshold: float = 0.9, budget: float = 4.0, scan: int = 64) -> None:
        self.threshold = threshold  # delta / size above this → a new raw root
        self.budget = budget  # a stream's source stays within budget × its root's size
        self.scan = scan  # newest hidden references HEADed per put when looking for a tip

    # ---------------------------------------------------------------- candidates

    def candidates(self, store, prefix: str, sha: str,
                   name: str) -> tuple[ObjectRecord | None, ObjectRecord | None]:  # fmt: skip
        """(a root or stream link already holding `sha`, else None; the tip to extend, else
        None) among the `scan` newest hidden references: the newest of the family of `name`
        if any (so interleaved series grow their own streams), else the newest."""
        family = _family(name)
        tip = None
        for age, key in enumerate(hidden_reference_keys(store, prefix)[: self.scan]):
            try:
                rec = store.hidden_heads(key)
            except NotFound:
                continue
            if not rec.sha256 or not _extendable(rec):
                continue
            if rec.sha256 == sha:
                return rec, None
            rank = (_family(rec.metadata.get("dg-source-name", "")) != family, age)
            if tip is None or rank < tip[0]:
                tip = (rank, rec)
        return None, tip[1] if tip else None

    def _stream(self, store, rec: ObjectRecord, tmp: Path,
                extending: bool) -> tuple[list[Part], list[Path]] | None:  # fmt: skip
        """The stream ending at `rec`, root first, with local copies of its parts; None when
        it went away or is broken, or (`extending`) is full: the caller starts a new root."""
        try:
            parts = stream.parts(store.hidden_heads, rec.stored_key, rec.sha256)
            if extending and self._full(parts):
                return None
            return parts, stream.fetch_parts(store.reader, parts, tmp)
        except NotFound as exc:
            log.info("%s: stream gone (%s); starting a new root", rec.stored_key, exc)
        except IntegrityError as exc:
            log.warning("%s: stream not usable (%s); starting a new root", rec.stored_key, exc)
        store.hidden_heads.forget()
        return None

    def _full(self, parts: list[Part]) -> bool:
        """Whether a link on this stream would pass MAX_STREAM_LINKS or the source budget."""
        cap = min(codec.max_source_window(), max(MIN_BUDGET, int(self.budget * parts[0].size)))
        return len(parts) > stream.MAX_STREAM_LINKS or sum(p.size for p in parts) > cap

    def _extend(self, store, src: Path, name: str, size: int, sha: str, tip: ObjectRecord,
                tmp: Path) -> Extension | None:  # fmt: skip
        """Encode `src` against the stream ending at `tip` (bounded by `threshold`); None when
        the stream is full or unrelated, or the delta too large."""
        got = self._stream(store, tip, tmp, extending=True)
        if got is None:
            return None
        parts, paths = got
        same_suffix = suffix_of(name) == suffix_of(tip.metadata.get("dg-source-name", "")) != ""
        if not looks_related(sniff(src), sniff(paths[0]), same_suffix):
            return None
        source, delta = tmp / "source", tmp / "stream.delta"
        stream.concat(paths, source)
        if codec.encode(source, src, delta, sha, int(self.threshold * size)) is None:
            return None
        source.unlink()
        return Extension(parts, paths, delta)

    # ---------------------------------------------------------------- put

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        old_ref = current_ref_key(store, logical_key)
        with store.scratch() as tmp:
            same, tip = self.candidates(store, prefix, sha, name)
            kept = None if same is None else self._stream(store, same, tmp, extending=False)
            if kept is None:
                ext = self._extend(store, src, name, size, sha, tip, tmp) if tip else None
                node = self._write_node(store, prefix, src, sha, name, ext)
                kept = ([*ext.parts, node], [*ext.paths, ext.delta]) if ext else ([node], [src])
            ref = kept[0][-1]
            delta = tmp / "self.delta"
            codec.encode(src, src, delta, sha)
            record = store.write_delta(
                logical_key,
                delta,
                Candidate(ref.key, sha, name),
                sha,
                size,
                extra,
                ensure=lambda: self._ensure(store, prefix, *kept),
                policy=self.name,
            )
        self._cache(store, src, sha)
        if old_ref and old_ref != ref.key and is_keyframe_key(old_ref):
            self.release(store, prefix)  # the overwritten delta may have been its last user
        return record

    def _write_node(self, store, prefix: str, src: Path, sha: str, name: str,
                    ext: Extension | None) -> Part:  # fmt: skip
        """Store `src` as a new hidden reference: a raw root, or a link extending `ext`."""
        key = f"{keyframe_base(prefix)}{time.time_ns():016x}-{sha[:16]}/{layout.REFERENCE_NAME}"
        meta = layout.reference_metadata(store.tool, name, sha)
        if ext is None:
            body, body_sha = src, sha
            meta[layout.META_CHAIN_DEPTH] = "0"
        else:
            body, body_sha, tip = ext.delta, sha256_file(ext.delta), ext.parts[-1]
            meta.update(
                {
                    "dg-note": STREAM_NOTE,
                    layout.META_CHAIN_PARENT: tip.key,
                    layout.META_CHAIN_PARENT_SHA: tip.sha256,
                    layout.META_CHAIN_DEPTH: "1",
                    layout.META_CHAIN_MODE: layout.STREAM_MODE,
                    layout.META_BODY_SHA: body_sha,
                }
            )
        meta = layout.fit_metadata(meta)
        size = body.stat().st_size
        try:
            store.store.put_file(key, body, layout.encode_metadata(meta), if_none_match=True)
            store.hidden_heads.remember(layout.record_from_head(key, size, "", 0, meta))
        except PreconditionFailed:
            pass  # same stamp and content from another writer: its link holds the same content
        log.info("%s: hidden reference for %s (%s)", key, name, "link" if ext else "root")
        if ext is not None:
            self._cache(store, body, body_sha)  # the next link's source ends with this body
        return Part(key, sha, body_sha, size, meta)

    def _ensure(self, store, prefix: str, parts: list[Part], paths: list[Path]) -> None:
        """Writer half of the delete protocol: every part of the stream our delta needs must
        exist after our PUT; one a collector removed meanwhile is put back, root first, with
        its stored bytes and metadata (conditional create, so two restorers agree)."""
        present = set(hidden_reference_keys(store, prefix))
        for part, path in zip(parts, paths, strict=True):
            if part.key in present:
                continue
            log.warning("%s: hidden reference vanished while writing; restoring it", part.key)
            try:
                store.store.put_file(
                    part.key, path, layout.encode_metadata(part.metadata), if_none_match=True
                )
            except PreconditionFailed:
                pass

    def _cache(self, store, src: Path, sha: str) -> None:
        """Keep bytes the next put will use in the read cache: a file's plaintext (reading it
        back costs no decode) or a link's body (part of the next link's source)."""
        if store.cache is None:
            return
        try:
            store.cache.get_or_create(sha, lambda tmp: shutil.copyfile(src, tmp)).close()
        except NotCacheable:
            pass

    # ---------------------------------------------------------------- release

    def release(self, store, prefix: str) -> None:
        collect_keyframes(store, prefix)
