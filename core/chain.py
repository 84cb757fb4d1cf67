"""The `adaptive` reference policy: hidden references chained as xdelta3 deltas (dgfs-only).

Every delta-eligible file becomes a hidden reference `{prefix}/.dgfs/refs/<stamp>-<sha16>/
reference.bin` and the user file a zero-diff self-delta against it, so user files never serve
as references and deleting one never breaks another. A hidden reference is stored either raw
(a *root*, chain depth 0) or as an xdelta3 delta against a parent hidden reference
(`dgfs-chain-parent`, `dgfs-chain-parent-sha256`, `dgfs-chain-depth` = parent's + 1).

Parent choice (online, per file): the newest hidden reference of each depth below
MAX_DECODES - 1 is tried (most recent first, bounded encodes); among the deltas within
`slack` of the smallest, the shallowest parent wins, which keeps shallow references fresh for
later versions. When no candidate is related or the smallest delta exceeds `threshold` × the
file, the file becomes a new raw root. Reading a file therefore costs at most MAX_DECODES
sequential decodes: its own (zero-diff) plus at most MAX_DECODES - 1 chain links, each
decoded chain reference cached by its sha256.

deltaglider cannot read these files unless their hidden reference is a root: it fetches the
chained reference's raw body, whose sha256 does not match `dg-ref-sha256`, and fails.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from core import codec, layout
from core.cache import NotCacheable
from core.errors import NotFound, PreconditionFailed
from core.layout import Kind, ObjectRecord
from core.policy import looks_related, sniff, suffix_of
from core.refpolicy import (
    MAX_DECODES,
    ReferencePolicy,
    collect_keyframes,
    current_ref_key,
    hidden_reference_keys,
    is_keyframe_key,
    keyframe_base,
)

log = logging.getLogger("dgfs.chain")

CHAIN_NOTE = "dgfs chain reference (xdelta3 delta against dgfs-chain-parent)"
NODE_MEMORY = 10_000  # hidden references remembered per store (then forgotten at once)


@dataclass(frozen=True)
class Node:
    """A hidden reference: where it is, what it holds, how many decodes it costs."""

    key: str
    sha256: str
    depth: int
    source_name: str


@dataclass(frozen=True)
class Choice:
    """An encoded candidate: the parent, the delta against it and the parent's bytes."""

    parent: Node
    delta: Path
    base: Path
    size: int


def node_depth(meta: dict[str, str]) -> int:
    """Chain depth recorded on a hidden reference (0: raw; unreadable values count as max)."""
    value = meta.get(layout.META_CHAIN_DEPTH, "0" if layout.chain_parent(meta) is None else "")
    return int(value) if value.isdigit() else MAX_DECODES


class ChainPolicy(ReferencePolicy):
    """Hidden references chained as deltas, depth-bounded; see the module docstring."""

    name = "adaptive"
    custom_put = True
    max_depth = MAX_DECODES

    def __init__(self, threshold: float = 0.9, slack: float = 0.5, scan: int = 16) -> None:
        self.threshold = threshold  # smallest delta / size above this → a new raw root
        self.slack = slack  # a shallower parent wins when its delta is within (1 + slack) ×
        self.scan = scan  # newest hidden references HEADed per put when looking for parents
        self.max_ref_depth = MAX_DECODES - 1  # the user file's own decode is the last one
        self._nodes: dict[str, Node] = {}  # hidden references seen (their sha never changes)
        self._lock = threading.Lock()

    def _node(self, store, key: str) -> Node | None:
        """A hidden reference's description (HEAD once per key; None if gone or unusable).

        A remembered depth can only be too high (a restore makes a link raw), never too low.
        """
        with self._lock:
            known = self._nodes.get(key)
        if known is not None:
            return known
        try:
            rec = store.head_record(key)
        except NotFound:
            return None
        if not rec.sha256:
            return None
        node = Node(
            key, rec.sha256, node_depth(rec.metadata), rec.metadata.get("dg-source-name", "")
        )
        self._remember(node)
        return node

    def _remember(self, node: Node) -> None:
        with self._lock:
            if len(self._nodes) >= NODE_MEMORY:
                self._nodes.clear()
            self._nodes[node.key] = node

    # ---------------------------------------------------------------- candidates

    def candidates(self, store, prefix: str, sha: str) -> tuple[Node | None, list[Node]]:
        """(a hidden reference already holding `sha` or None, the newest hidden reference of
        each usable depth, deepest first) among the `scan` newest."""
        found: dict[int, Node] = {}
        for key in hidden_reference_keys(store, prefix)[: self.scan]:
            node = self._node(store, key)
            if node is None:
                continue
            if node.sha256 == sha and node.depth <= self.max_ref_depth:
                return node, []
            if node.depth < self.max_ref_depth and node.depth not in found:
                found[node.depth] = node
        return None, [found[d] for d in sorted(found, reverse=True)]

    def _choose(self, store, src: Path, name: str, size: int, nodes: list[Node],
                tmp: Path) -> Choice | None:  # fmt: skip
        """Encode against each candidate (bounded); the shallowest delta within slack of the
        smallest, or None when nothing is related or every delta exceeds the threshold."""
        head = sniff(src)
        done: list[Choice] = []
        for i, node in enumerate(nodes):
            base, delta = tmp / f"base{i}", tmp / f"delta{i}"
            try:
                store._reference_file(node.key, node.sha256, base)
            except NotFound:
                with self._lock:
                    self._nodes.pop(node.key, None)
                continue  # collected meanwhile
            same_suffix = suffix_of(name) == suffix_of(node.source_name) != ""
            if not looks_related(head, sniff(base), same_suffix):
                continue
            limit = self.threshold * size
            if done:
                limit = min(limit, (1 + self.slack) * min(c.size for c in done))
            n = codec.encode(base, src, delta, int(limit))
            if n is not None:
                done.append(Choice(node, delta, base, n))
        if not done:
            return None
        best = min(c.size for c in done)
        ok = [c for c in done if c.size <= (1 + self.slack) * best]
        return min(ok, key=lambda c: (c.parent.depth, c.size))

    # ---------------------------------------------------------------- put

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        old_ref = current_ref_key(store, logical_key)
        with store._scratch() as tmp:
            node, nodes = self.candidates(store, prefix, sha)
            choice = None
            if node is None:
                choice = self._choose(store, src, name, size, nodes, tmp)
                node = self._write_node(store, prefix, src, sha, name, choice)
            delta = tmp / "self.delta"
            codec.encode(src, src, delta)
            delta_size = delta.stat().st_size
            meta = layout.delta_metadata(
                store.tool, name, sha, size, node.key, sha, delta_size, zero_diff=True
            )
            meta = layout.fit_metadata({**meta, layout.META_POLICY: self.name, **extra})
            store.store.put_file(layout.delta_key(logical_key), delta, layout.encode_metadata(meta))
            store.ensure_reference(node.key, sha, name, src)
            if choice is not None:
                p = choice.parent
                store.ensure_reference(p.key, p.sha256, p.source_name, choice.base)
        self._cache(store, src, sha)
        if old_ref and old_ref != node.key and is_keyframe_key(old_ref):
            self.release(store, prefix)  # the overwritten delta may have been its last user
        record = store._written(
            layout.delta_key(logical_key), Kind.DELTA, delta_size, size, sha, meta
        )
        return replace(record, ref_key=node.key, ref_sha256=sha)

    def _write_node(self, store, prefix: str, src: Path, sha: str, name: str,
                    choice: Choice | None) -> Node:  # fmt: skip
        """Store `src` as a new hidden reference: raw root, or a delta against the parent."""
        key = f"{keyframe_base(prefix)}{time.time_ns():016x}-{sha[:16]}/{layout.REFERENCE_NAME}"
        meta = layout.reference_metadata(store.tool, name, sha)
        if choice is None:
            body, depth = src, 0
        else:
            body, depth = choice.delta, choice.parent.depth + 1
            meta["dg-note"] = CHAIN_NOTE
            meta[layout.META_CHAIN_PARENT] = choice.parent.key
            meta[layout.META_CHAIN_PARENT_SHA] = choice.parent.sha256
        meta[layout.META_CHAIN_DEPTH] = str(depth)
        meta = layout.fit_metadata(meta)
        try:
            store.store.put_file(key, body, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            pass  # same stamp and content from another writer: equally valid bytes
        log.info("%s: hidden reference for %s, depth %d", key, name, depth)
        node = Node(key, sha, depth, name)
        self._remember(node)
        return node

    def _cache(self, store, src: Path, sha: str) -> None:
        """Keep the new reference's plaintext in the read cache: the next version of the
        series encodes against it, and reading this file back costs no decode."""
        if store.cache is None:
            return
        try:
            store.cache.get_or_create(sha, lambda tmp: shutil.copyfile(src, tmp)).close()
        except NotCacheable:
            pass

    # ---------------------------------------------------------------- release

    def release(self, store, prefix: str) -> None:
        collect_keyframes(store, prefix)
