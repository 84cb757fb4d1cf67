"""The `adaptive` reference policy: hidden references chained as xdelta3 deltas (dgfs-only).

Hidden references live at `{prefix}/.dgfs/refs/<stamp>-<sha16>/reference.bin` and are stored
either raw (a *root*, chain depth 0) or as an xdelta3 delta against a parent hidden reference
(`dgfs-chain-parent`, `dgfs-chain-parent-sha256`, `dgfs-chain-depth` = parent's + 1, at most
MAX_DECODES - 1). User files only ever point at hidden references, never at each other, so
deleting a file never breaks another.

Per file (online): one hidden reference of each depth is tried (the newest whose source
name has the file's stem before the first digit and suffix, else the newest), deepest
first, with bounded encodes, and the delta with the smallest
`size × (1 + depth_penalty × depth of the result)` wins (shallow references stay fresh for
later versions). Then:
- parent shallower than the bound: the file becomes a new hidden reference (a delta against
  the parent) and the user file a zero-diff self-delta against it;
- parent at the bound: no later file could chain on this one, so the user file is simply a
  delta against the parent (a *leaf*, no hidden reference of its own);
- nothing related, or every delta above `threshold` × the file: a new raw root.
Reading a file is therefore at most MAX_DECODES sequential decodes, its own included; each
decoded hidden reference is cached by its sha256, so reading a series in order costs about
one decode per file.

deltaglider can only read the files whose reference is a root: for a chained one it fetches
the link's raw body, whose sha256 does not match `dg-ref-sha256`, and fails.
"""

from __future__ import annotations

import logging
import re
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
    chain_depth,
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

    def score(self, penalty: float) -> float:
        return self.size * (1 + penalty * (self.parent.depth + 1))


def _family(name: str) -> tuple[str, str]:
    """What versions of one series share: the name before its first digit, and its suffix."""
    return re.match(r"[^0-9]*", name).group(), suffix_of(name)


class ChainPolicy(ReferencePolicy):
    """Hidden references chained as deltas, depth-bounded; see the module docstring."""

    name = "adaptive"
    custom_put = True

    def __init__(self, threshold: float = 0.9, depth_penalty: float = 0.7,
                 scan: int = 64) -> None:  # fmt: skip
        self.threshold = threshold  # smallest delta / size above this → a new raw root
        self.depth_penalty = depth_penalty  # see the module docstring
        self.scan = scan  # newest hidden references HEADed per put when looking for parents
        self.max_node_depth = MAX_DECODES - 1  # the user file's own decode is the last one
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
            key, rec.sha256, chain_depth(rec.metadata), rec.metadata.get("dg-source-name", "")
        )
        self._remember(node)
        return node

    def _remember(self, node: Node) -> None:
        with self._lock:
            if len(self._nodes) >= NODE_MEMORY:
                self._nodes.clear()
            self._nodes[node.key] = node

    # ---------------------------------------------------------------- candidates

    def candidates(self, store, prefix: str, sha: str,
                   name: str) -> tuple[Node | None, list[Node]]:  # fmt: skip
        """(a hidden reference already holding `sha` or None, one hidden reference per usable
        depth, deepest first) among the `scan` newest: per depth the newest of the same
        family as `name` if any (so interleaved series chain on their own kind)."""
        family = _family(name)
        scanned = []
        for age, key in enumerate(hidden_reference_keys(store, prefix)[: self.scan]):
            node = self._node(store, key)
            if node is None or node.depth > self.max_node_depth:
                continue
            if node.sha256 == sha:
                return node, []
            scanned.append((_family(node.source_name) != family, age, node))
        found: dict[int, Node] = {}
        for _, _, node in sorted(scanned, key=lambda t: t[:2]):
            found.setdefault(node.depth, node)
        return None, [found[d] for d in sorted(found, reverse=True)]

    def _choose(self, store, src: Path, name: str, size: int, nodes: list[Node],
                tmp: Path) -> Choice | None:  # fmt: skip
        """Encode against each candidate (bounded); the best score, or None when nothing is
        related or every delta exceeds the threshold (a leaf also needs `max_ratio`)."""
        head = sniff(src)
        best: Choice | None = None
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
            ratio = self.threshold
            if node.depth == self.max_node_depth:
                ratio = min(ratio, store.settings.max_ratio)
            limit = ratio * size
            if best is not None:  # only a better score is of any use
                weight = 1 + self.depth_penalty * (node.depth + 1)
                limit = min(limit, best.score(self.depth_penalty) / weight)
            n = codec.encode(base, src, delta, int(limit))
            if n is not None:
                choice = Choice(node, delta, base, n)
                if best is None or choice.score(self.depth_penalty) < best.score(
                    self.depth_penalty
                ):
                    best = choice
        return best

    # ---------------------------------------------------------------- put

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        old_ref = current_ref_key(store, logical_key)
        with store._scratch() as tmp:
            node, nodes = self.candidates(store, prefix, sha, name)
            choice = None
            if node is None:
                choice = self._choose(store, src, name, size, nodes, tmp)
            if choice is not None and choice.parent.depth == self.max_node_depth:
                ref, delta, local = choice.parent, choice.delta, choice.base  # a leaf
            else:
                if node is None:
                    node = self._write_node(store, prefix, src, sha, name, choice)
                ref, delta, local = node, tmp / "self.delta", src
                codec.encode(src, src, delta)
            delta_size = delta.stat().st_size
            meta = layout.delta_metadata(
                store.tool, name, sha, size, ref.key, ref.sha256, delta_size, ref.sha256 == sha
            )
            meta = layout.fit_metadata({**meta, layout.META_POLICY: self.name, **extra})
            store.store.put_file(layout.delta_key(logical_key), delta, layout.encode_metadata(meta))
            store.ensure_reference(ref.key, ref.sha256, ref.source_name, local)
            if choice is not None and ref is not choice.parent:
                p = choice.parent
                store.ensure_reference(p.key, p.sha256, p.source_name, choice.base)
        self._cache(store, src, sha)
        if old_ref and old_ref != ref.key and is_keyframe_key(old_ref):
            self.release(store, prefix)  # the overwritten delta may have been its last user
        record = store._written(
            layout.delta_key(logical_key), Kind.DELTA, delta_size, size, sha, meta
        )
        return replace(record, ref_key=ref.key, ref_sha256=ref.sha256)

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
        """Keep the file's plaintext in the read cache: the next version of the series
        encodes against it, and reading this file back costs no decode."""
        if store.cache is None:
            return
        try:
            store.cache.get_or_create(sha, lambda tmp: shutil.copyfile(src, tmp)).close()
        except NotCacheable:
            pass

    # ---------------------------------------------------------------- release

    def release(self, store, prefix: str) -> None:
        collect_keyframes(store, prefix)
