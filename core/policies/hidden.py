"""Hidden references (`{prefix}/.dgfs/refs/<stamp>-<sha256[:16]>/reference.bin`): their keys,
the collector that deletes those no delta uses, and how many decodes a file takes.

A hidden reference is deleted when no delta of its deltaspace uses it, directly or through a
chain (checked on delete/overwrite: LIST + HEAD of the deltaspace's deltas and of the chains
they use, with the same keep-bytes / delete / re-check / restore protocol as
`reference.bin`); hidden references left by other writers can be swept with
`collect_keyframes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core import layout
from core.errors import NotFound, PreconditionFailed
from core.layout import Kind, ObjectRecord
from core.policies.base import MAX_DECODES

log = logging.getLogger("dgfs.policies")

KEYFRAME_DIR = ".dgfs/refs"


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
    as References.remove_unused does for reference.bin.
    """
    hidden = hidden_reference_keys(store, prefix)
    if not hidden:
        return []
    unused = [k for k in hidden if k not in _live(store, _used_refs(store, prefix), {})]
    if not unused:
        return []
    removed = []
    with store.scratch() as tmp:
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
