"""Reference policies: which stored reference a new delta is encoded against.

`deltaglider` (default): one `{prefix}/reference.bin` per deltaspace, the first delta-eligible
file, never replaced; every delta is encoded against it (DeltaStore's built-in path, unchanged).

`adaptive`: hidden references in xdelta3 streams, dgfs-only (core/chain.py, ChainPolicy;
core/stream.py).

`adaptive-compatible` (AdaptivePolicy here): besides `{prefix}/reference.bin` a
deltaspace may hold keyframes, extra raw references at
`{prefix}/.dgfs/refs/<stamp>-<sha256[:16]>/reference.bin` (`<stamp>`: 16 hex digits of the
writer's clock in ns, so keys sort by age). A new file is encoded against the newest
reference(s) and the smallest delta kept; when even that delta exceeds `threshold` × size, the
file ALSO becomes a new keyframe and is stored as a zero-diff self-delta against it (as
deltaglider stores a deltaspace's first file). Every delta therefore points at a raw reference:
reconstruction is always one decode, and deltaglider reads every file (it resolves
`dirname(dg-ref-key)/reference.bin`). References are never user files, so deleting a file
never breaks another. A hidden reference (keyframe or chain link) is deleted when no delta of
its deltaspace uses it, directly or through a chain (checked by an adaptive store on
delete/overwrite: LIST + HEAD of the deltaspace's deltas and of the chains they use, with the
same keep-bytes / delete / re-check / restore protocol as `reference.bin`); hidden references
left by other writers can be swept with `collect_keyframes`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from core import codec, layout
from core.config import REFERENCE_POLICIES
from core.errors import NotFound, PreconditionFailed
from core.layout import Kind, ObjectRecord
from core.policy import looks_related, sniff, suffix_of

log = logging.getLogger("dgfs.refpolicy")

POLICY_NAMES = REFERENCE_POLICIES
DEFAULT_POLICY = "deltaglider"
KEYFRAME_DIR = ".dgfs/refs"
MAX_DECODES = 4  # sequential decodes to read any file, its own included (compatible: 1)


@dataclass(frozen=True)
class Candidate:
    """A raw reference a new file may be encoded against."""

    key: str
    sha256: str
    source_name: str


def keyframe_base(prefix: str) -> str:
    return layout.join_key(prefix, KEYFRAME_DIR) + "/"


def is_keyframe_key(key: str) -> bool:
    """A hidden reference (adaptive keyframe or chain link) of some deltaspace."""
    return f"/{KEYFRAME_DIR}/" in f"/{key}" and key.endswith("/" + layout.REFERENCE_NAME)


def hidden_reference_keys(store, prefix: str) -> list[str]:
    """The hidden references of one deltaspace, newest first (keys sort by writer stamp)."""
    keys = [
        o.key
        for page in store.store.list_pages(keyframe_base(prefix), None)
        for o in page.objects
        if is_keyframe_key(o.key)
    ]
    return sorted(keys, reverse=True)


def current_ref_key(store, logical_key: str) -> str | None:
    """The reference the delta stored under `logical_key` uses now (None: no delta)."""
    try:
        return store.head_record(layout.delta_key(logical_key)).ref_key
    except NotFound:
        return None


class ReferencePolicy:
    """Interface. `custom_put` False: DeltaStore's built-in deltaglider path is used."""

    name = DEFAULT_POLICY
    custom_put = False

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        """Store `src` as a delta (its record) or return None to store it direct."""
        raise NotImplementedError

    def release(self, store, prefix: str) -> None:
        """Called when a delta of `prefix` went away (delete or replaced by a direct file)."""


class DeltagliderPolicy(ReferencePolicy):
    """deltaglider's rule: one reference.bin per deltaspace (DeltaStore's own code path)."""


class AdaptivePolicy(ReferencePolicy):
    """Keyframes (extra raw references) promoted when deltas drift; every delta is depth 1."""

    custom_put = True

    def __init__(self, name: str = "adaptive-compatible", threshold: float = 0.3, tries: int = 2,
                 good_enough: float = 0.05) -> None:  # fmt: skip
        self.name = name
        self.threshold = threshold  # best delta / size above this → the file becomes a keyframe
        self.tries = tries  # newest references tried per file
        self.good_enough = good_enough  # stop trying older references below this ratio

    # ---------------------------------------------------------------- candidates

    def candidates(self, store, prefix: str) -> list[Candidate]:
        """Raw keyframes newest first (chain links of `adaptive` are skipped: deltaglider
        could not read through them), then the deltaspace's reference.bin."""
        out: list[Candidate] = []
        for key in hidden_reference_keys(store, prefix):
            if len(out) >= self.tries:
                break
            try:
                rec = store.head_record(key)
            except NotFound:
                continue
            if rec.sha256 and layout.chain_parent(rec.metadata) is None:
                out.append(Candidate(key, rec.sha256, rec.metadata.get("dg-source-name", "")))
        if len(out) < self.tries:
            ref = store.reference(prefix)
            if ref is not None:
                out.append(Candidate(ref.key, ref.sha256, ref.source_name))
        return out

    # ---------------------------------------------------------------- put

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        old_ref = current_ref_key(store, logical_key)
        with store._scratch() as tmp:
            if store.reference(prefix) is None and store._create_reference(prefix, src, sha, name):
                ref = store.reference(prefix)
                chosen = Candidate(ref.key, ref.sha256, ref.source_name)
                delta, local = tmp / "self.delta", src
                codec.encode(src, src, delta, sha)
            else:
                best = self._best_delta(store, src, name, sha, size, prefix, tmp)
                if best is None:
                    return None
                chosen, delta, local = best
                if chosen.sha256 != sha and delta.stat().st_size > self.threshold * size:
                    chosen = self._promote(store, prefix, src, sha, name)
                    delta, local = tmp / "self.delta", src
                    codec.encode(src, src, delta, sha)
            zero_diff = chosen.sha256 == sha
            delta_size = delta.stat().st_size
            if size and delta_size > store.settings.max_ratio * size and not zero_diff:
                return None
            meta = layout.delta_metadata(
                store.tool, name, sha, size, chosen.key, chosen.sha256, delta_size, zero_diff
            )
            meta = layout.fit_metadata({**meta, layout.META_POLICY: self.name, **extra})
            stamp = store.store.put_file(
                layout.delta_key(logical_key), delta, layout.encode_metadata(meta)
            )
            store.ensure_reference(chosen.key, chosen.sha256, chosen.source_name, local)
        if old_ref and old_ref != chosen.key and is_keyframe_key(old_ref):
            self.release(store, prefix)  # the overwritten delta may have been its last user
        record = store._written(
            layout.delta_key(logical_key), Kind.DELTA, delta_size, size, sha, meta, stamp
        )
        return replace(record, ref_key=chosen.key, ref_sha256=chosen.sha256)

    def _best_delta(self, store, src: Path, name: str, sha: str, size: int, prefix: str,
                    tmp: Path) -> tuple[Candidate, Path, Path] | None:  # fmt: skip
        """Encode against the newest references; the smallest (candidate, delta, ref copy)."""
        head = sniff(src)
        best = None
        for i, cand in enumerate(self.candidates(store, prefix)):
            ref_path, delta = tmp / f"ref{i}", tmp / f"delta{i}"
            if cand.sha256 == sha:
                shutil.copyfile(src, ref_path)
            else:
                store._reference_file(cand.key, cand.sha256, ref_path)
                same_suffix = suffix_of(name) == suffix_of(cand.source_name) != ""
                if not looks_related(head, sniff(ref_path), same_suffix):
                    continue
            codec.encode(ref_path, src, delta, sha)
            if best is None or delta.stat().st_size < best[1].stat().st_size:
                best = (cand, delta, ref_path)
            if cand.sha256 == sha or delta.stat().st_size <= self.good_enough * size:
                break
        return best

    def _promote(self, store, prefix: str, src: Path, sha: str, name: str) -> Candidate:
        """Write `src` as a new keyframe (conditional create; same bytes → same key reused)."""
        stamp = f"{time.time_ns():016x}"
        key = f"{keyframe_base(prefix)}{stamp}-{sha[:16]}/{layout.REFERENCE_NAME}"
        meta = layout.fit_metadata(layout.reference_metadata(store.tool, name, sha))
        try:
            store.store.put_file(key, src, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            pass  # same stamp and content: the object holds exactly these bytes
        log.info("%s: new keyframe for %s", key, name)
        return Candidate(key, sha, name)

    # ---------------------------------------------------------------- release

    def release(self, store, prefix: str) -> None:
        collect_keyframes(store, prefix)


def _used_refs(store, prefix: str) -> set[str]:
    """Reference keys the deltas of one deltaspace point at (delimited LIST + HEADs)."""
    base = f"{prefix}/" if prefix else ""
    deltas = [
        o
        for page in store.store.list_pages(base)
        for o in page.objects
        if o.key.endswith(layout.DELTA_SUFFIX)
    ]
    used = set()
    for rec in store.records(deltas) if deltas else []:
        used.add(rec.ref_key or layout.reference_key(prefix))
    return used


def _live(store, used: set[str], known: dict[str, dict[str, str]]) -> set[str]:
    """`used` closed under chain parents (HEADs the chain links not in `known`, which maps
    keys to metadata already at hand, e.g. of references this caller just deleted)."""
    live, todo = set(), list(used)
    while todo:
        key = todo.pop()
        if key in live:
            continue
        live.add(key)
        if not is_keyframe_key(key):
            continue
        meta = known.get(key)
        if meta is None:
            try:
                meta = store.head_record(key).metadata
            except NotFound:
                continue
        parent = layout.chain_parent(meta)
        if parent is not None:
            todo.append(parent[0])
    return live


def collect_keyframes(store, prefix: str) -> list[str]:
    """Delete the hidden references of `prefix` no delta uses, directly or through a chain;
    returns the deleted keys.

    Keeps each one's bytes, deletes chain links before their parents, then re-checks; a
    reference that gained a user meanwhile is restored (conditional create, parents first),
    as DeltaStore.remove_unused_reference does for reference.bin.
    """
    hidden = hidden_reference_keys(store, prefix)
    if not hidden:
        return []
    unused = [k for k in hidden if k not in _live(store, _used_refs(store, prefix), {})]
    if not unused:
        return []
    removed = []
    with store._scratch() as tmp:
        kept: dict[str, tuple[Path, dict[str, str]]] = {}
        for i, key in enumerate(unused):
            path = tmp / f"kf{i}"
            try:
                with path.open("wb") as f:
                    info, _ = store.store.download(key, f)
            except NotFound:
                continue
            kept[key] = (path, info.metadata or {})
        known = {k: layout.decode_metadata(meta) for k, (_, meta) in kept.items()}
        order = _parents_first(known)
        for key in reversed(order):
            store.store.delete(key)
        live = _live(store, _used_refs(store, prefix), known)
        for key in order:
            if key not in live:
                removed.append(key)
                continue
            log.warning("%s: a delta appeared while deleting; restoring hidden reference", key)
            try:
                store.store.put_file(key, kept[key][0], kept[key][1], if_none_match=True)
            except PreconditionFailed:
                pass
    return removed


def _parents_first(metas: dict[str, dict[str, str]]) -> list[str]:
    """The keys of `metas` ordered so that each comes after its chain parent, if present."""

    def links_below(key: str) -> int:
        n, seen, parent = 0, {key}, layout.chain_parent(metas[key])
        while parent and parent[0] in metas and parent[0] not in seen:
            n, key = n + 1, parent[0]
            seen.add(key)
            parent = layout.chain_parent(metas[key])
        return n

    return sorted(metas, key=links_below)


def reconstruct_depth(store, record: ObjectRecord) -> int:
    """Sequential decodes needed to read `record` (0: direct/plain): its own (a zero-diff
    self-delta counts too) plus one per chain link below its reference (a stream link counts
    once: its source is raw bytes)."""
    if record.kind != Kind.DELTA or not record.ref_key:
        return 0
    depth, key = 1, record.ref_key
    while depth <= MAX_DECODES:
        meta = store.head_record(key).metadata
        parent = layout.chain_parent(meta)
        if parent is None:
            break
        depth, key = depth + 1, parent[0]
        if layout.is_stream_link(meta):
            break
    return depth


def make_policy(name: str | None) -> ReferencePolicy:
    """The policy called `name` (None/'' → deltaglider); ValueError for an unknown name."""
    name = (name or DEFAULT_POLICY).strip().lower()
    if name == "deltaglider":
        return DeltagliderPolicy()
    if name == "adaptive":
        from core.chain import ChainPolicy  # core.chain builds on this module

        return ChainPolicy()
    if name == "adaptive-compatible":
        return AdaptivePolicy(name)
    raise ValueError(f"unknown reference policy {name!r} (one of {', '.join(POLICY_NAMES)})")
