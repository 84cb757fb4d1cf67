"""Storage statistics from LIST + HEAD metadata only (no object body is read).

Accounting per deltaspace (see the spec's "Stats fields"): original bytes are `dg-file-size`
for deltas and the object size otherwise; stored bytes are the object sizes plus the
deltaspace's `reference.bin` (and hidden references) when a delta uses it, directly or through
a dgfs reference chain. Each delta is attributed to the reference policy that wrote it
(`dgfs-policy`; without it: `adaptive-compatible` when it points at a hidden reference,
otherwise `deltaglider`). Plain objects (no dg metadata) count at
their size. A reference (or hidden reference) no listed delta uses, directly or through a
chain, is orphaned; a delta whose reference, or a chain link below it, is absent is
unreadable (a missing reference).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core import layout
from core.deltastore import DeltaStore
from core.errors import NotFound
from core.layout import Kind, ObjectRecord
from core.metadata import RecordCache
from core.objectstore import ObjectInfo
from core.policies.hidden import KEYFRAME_DIR, collect_keyframes, is_keyframe_key, keyframe_base

DIR_XATTR_PREFIX = "user.dg.dir."
BUCKET_XATTR_PREFIX = "user.dg.bucket."

Progress = Callable[[int], None]


@dataclass
class DeltaspaceStats:
    """Counts and bytes of one deltaspace (or, as a total, of many: reference fields summed)."""

    prefix: str
    delta_count: int = 0
    direct_count: int = 0
    plain_count: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0
    reference_size: int = 0
    reference_sha256: str | None = None
    reference_key: str | None = None
    reference_used: bool = False
    missing_references: dict[str, str] = field(default_factory=dict)  # delta key → reference
    policies: dict[str, int] = field(default_factory=dict)  # reference policy → its deltas
    transforms: dict[str, int] = field(default_factory=dict)  # archive transform → its deltas
    orphaned_hidden: dict[str, int] = field(default_factory=dict)  # unused hidden ref → size
    computed_at: float = field(default_factory=time.time)

    @property
    def file_count(self) -> int:
        return self.delta_count + self.direct_count + self.plain_count

    @property
    def ratio(self) -> float:
        """Stored over original bytes; 0 when nothing is stored."""
        return self.stored_bytes / self.original_bytes if self.original_bytes else 0.0

    @property
    def saved_bytes(self) -> int:
        return self.original_bytes - self.stored_bytes

    @property
    def policy(self) -> str:
        """The reference policies that wrote this deltaspace's deltas ('a+b'; 'none')."""
        return "+".join(sorted(self.policies)) or "none"

    @property
    def orphaned(self) -> bool:
        """A reference.bin exists but no delta uses it."""
        return self.reference_key is not None and not self.reference_used

    def to_json(self) -> dict:
        return {
            "prefix": self.prefix,
            "file_count": self.file_count,
            "delta_count": self.delta_count,
            "direct_count": self.direct_count,
            "plain_count": self.plain_count,
            "original_bytes": self.original_bytes,
            "stored_bytes": self.stored_bytes,
            "ratio": self.ratio,
            "saved_bytes": self.saved_bytes,
            "policy": self.policy,
            "policies": dict(sorted(self.policies.items())),
            "transforms": dict(sorted(self.transforms.items())),
            "reference_key": self.reference_key,
            "reference_size": self.reference_size,
            "reference_sha256": self.reference_sha256,
            "orphaned_reference": self.orphaned,
            "missing_references": dict(self.missing_references),
            "computed_at": iso_time(self.computed_at),
        }


@dataclass
class BucketStats:
    """Totals over every deltaspace under a prefix, with deltaglider's `stats --json` fields."""

    bucket: str
    prefix: str
    total: DeltaspaceStats
    deltaspaces: dict[str, DeltaspaceStats]

    @property
    def orphaned_references(self) -> dict[str, int]:
        """Orphaned reference key → its size."""
        out = {
            s.reference_key: s.reference_size
            for s in self.deltaspaces.values()
            if s.orphaned and s.reference_key
        }
        for s in self.deltaspaces.values():
            out.update(s.orphaned_hidden)
        return out

    @property
    def missing_references(self) -> dict[str, str]:
        return self.total.missing_references

    def to_json(self, detailed: bool = False) -> dict:
        t = self.total
        saved = max(t.saved_bytes, 0)  # deltaglider clamps both at zero
        out = {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "object_count": t.file_count,
            "total_size": t.original_bytes,
            "compressed_size": t.stored_bytes,
            "space_saved": saved,
            "average_compression_ratio": saved / t.original_bytes if t.original_bytes else 0.0,
            "delta_objects": t.delta_count,
            "direct_objects": t.direct_count + t.plain_count,  # deltaglider: every non-delta
            "plain_objects": t.plain_count,
            "original_bytes": t.original_bytes,
            "stored_bytes": t.stored_bytes,
            "saved_bytes": t.saved_bytes,
            "ratio": t.ratio,
            "reference_bytes": t.reference_size,
            "policy": t.policy,
            "policies": dict(sorted(t.policies.items())),
            "transforms": dict(sorted(t.transforms.items())),
            "orphaned_references": [
                {"key": k, "size": v} for k, v in self.orphaned_references.items()
            ],
            "missing_references": [
                {"key": k, "reference": v} for k, v in self.missing_references.items()
            ],
            "computed_at": iso_time(t.computed_at),
        }
        if detailed:
            out["deltaspaces"] = {p: s.to_json() for p, s in sorted(self.deltaspaces.items())}
        return out


def iso_time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _counted(key: str) -> bool:
    """Listed keys that stats look at: no directory markers, no tool-private prefixes except
    the adaptive policy's keyframe references (counted in the deltaspace they serve)."""
    if key.endswith("/"):
        return False
    if is_keyframe_key(key):
        return True
    return not any(p in layout.HIDDEN_SEGMENTS for p in key.split("/")[:-1])


def _is_reference(key: str) -> bool:
    return key.rsplit("/", 1)[-1] == layout.REFERENCE_NAME


def _space_of(key: str) -> str:
    """The deltaspace a key belongs to (a keyframe belongs to the one it serves)."""
    if is_keyframe_key(key):
        return key.split(KEYFRAME_DIR + "/", 1)[0].rstrip("/")
    return layout.deltaspace_of(key)


def _policy_of(delta: ObjectRecord) -> str:
    """The reference policy that wrote a delta (see the module docstring)."""
    policy = delta.metadata.get(layout.META_POLICY)
    if policy:
        return policy
    return "adaptive-compatible" if is_keyframe_key(delta.ref_key or "") else "deltaglider"


@contextmanager
def _record_cache(store: DeltaStore, records: RecordCache | None) -> Iterator[RecordCache]:
    """The caller's RecordCache, or a private one closed afterwards."""
    if records is not None:
        yield records
        return
    own = RecordCache(store)
    try:
        yield own
    finally:
        own.close()


def _resolve(cache: RecordCache, objects: list[ObjectInfo]) -> list[ObjectRecord]:
    """Records of listed objects (HEADs in parallel unless cached); vanished ones dropped."""
    return [r for r in cache.resolve(objects) if r is not None]


class _Tally:
    """Accumulates records into per-deltaspace stats."""

    def __init__(self, store: DeltaStore) -> None:
        self.store = store
        self.spaces: dict[str, DeltaspaceStats] = {}
        self.refs: dict[str, ObjectRecord] = {}
        self.deltas: list[ObjectRecord] = []
        self._exists: dict[str, bool] = {}

    def space(self, prefix: str) -> DeltaspaceStats:
        if prefix not in self.spaces:
            self.spaces[prefix] = DeltaspaceStats(prefix)
        return self.spaces[prefix]

    def add(self, record: ObjectRecord) -> None:
        key = record.stored_key
        s = self.space(_space_of(key))
        if _is_reference(key):
            self.refs[key] = record
            if not is_keyframe_key(key):
                s.reference_key, s.reference_size = key, record.stored_size
                s.reference_sha256 = record.sha256
            return
        s.stored_bytes += record.stored_size
        s.original_bytes += max(record.original_size, 0)
        if record.kind == Kind.DELTA:
            s.delta_count += 1
            self.deltas.append(record)
            policy = _policy_of(record)
            s.policies[policy] = s.policies.get(policy, 0) + 1
            transform = record.metadata.get(layout.META_TRANSFORM)
            if transform:  # an archive delta (core/archivedelta.py)
                s.transforms[transform] = s.transforms.get(transform, 0) + 1
        elif record.kind == Kind.DIRECT:
            s.direct_count += 1
        else:
            s.plain_count += 1

    def finish(self) -> dict[str, DeltaspaceStats]:
        """Attribute each delta to its reference (and the chain below it): mark them used, or
        record the delta's missing reference; unused hidden references are orphaned."""
        used: set[str] = set()
        for delta in self.deltas:
            ref_key = delta.ref_key or layout.reference_key(layout.deltaspace_of(delta.stored_key))
            allowed = layout.ref_key_allowed(delta.stored_key, ref_key)  # else unreadable
            while ref_key is not None and ref_key not in used:
                if not allowed or ref_key not in self.refs:
                    if not allowed or not self._head_exists(ref_key):
                        space = self.space(layout.deltaspace_of(delta.stored_key))
                        space.missing_references[delta.stored_key] = ref_key
                    break
                used.add(ref_key)
                parent = layout.chain_parent(self.refs[ref_key].metadata)
                ref_key = parent[0] if parent else None
        for ref_key, record in self.refs.items():
            space = self.space(_space_of(ref_key))
            if ref_key in used:
                space.reference_used = space.reference_used or not is_keyframe_key(ref_key)
                space.stored_bytes += record.stored_size
            elif is_keyframe_key(ref_key):
                space.orphaned_hidden[ref_key] = record.stored_size
        return self.spaces

    def _head_exists(self, key: str) -> bool:
        """Whether an unlisted reference exists (elsewhere; one HEAD each, remembered)."""
        if key not in self._exists:
            try:
                self.store.store.head(key)
                self._exists[key] = True
            except NotFound:
                self._exists[key] = False
        return self._exists[key]


def _sum(prefix: str, parts: Iterable[DeltaspaceStats]) -> DeltaspaceStats:
    total = DeltaspaceStats(prefix)
    for s in parts:
        total.delta_count += s.delta_count
        total.direct_count += s.direct_count
        total.plain_count += s.plain_count
        total.original_bytes += s.original_bytes
        total.stored_bytes += s.stored_bytes
        total.reference_size += s.reference_size
        total.reference_used = total.reference_used or s.reference_used
        total.missing_references.update(s.missing_references)
        total.orphaned_hidden.update(s.orphaned_hidden)
        for policy, n in s.policies.items():
            total.policies[policy] = total.policies.get(policy, 0) + n
        for transform, n in s.transforms.items():
            total.transforms[transform] = total.transforms.get(transform, 0) + n
    return total


def bucket_stats(
    store: DeltaStore,
    prefix: str = "",
    records: RecordCache | None = None,
    progress: Progress | None = None,
) -> BucketStats:
    """Stats of everything under `prefix` (recursive LIST, one HEAD per object).

    `progress(n)` is called with the number of objects examined so far, once per LIST page.
    """
    base = _base(prefix)
    tally = _Tally(store)
    seen = 0
    with _record_cache(store, records) as cache:
        for page in store.store.list_pages(base, delimiter=None):
            for record in _resolve(cache, [o for o in page.objects if _counted(o.key)]):
                tally.add(record)
            seen += len(page.objects)
            if progress:
                progress(seen)
    spaces = tally.finish()
    scope = base.rstrip("/")
    return BucketStats(store.store.bucket, scope, _sum(scope, spaces.values()), spaces)


def deltaspace_stats(
    store: DeltaStore, prefix: str, records: RecordCache | None = None
) -> DeltaspaceStats:
    """Stats of ONE directory level: one delimited LIST plus HEADs (reused from `records`)."""
    base = _base(prefix)
    tally = _Tally(store)
    tally.space(base.rstrip("/"))
    objects = [o for page in store.store.list_pages(base) for o in page.objects if _counted(o.key)]
    with _record_cache(store, records) as cache:
        records_here = _resolve(cache, objects)
        if any(r.ref_key and is_keyframe_key(r.ref_key) for r in records_here):
            pages = store.store.list_pages(keyframe_base(base.rstrip("/")), delimiter=None)
            keyframes = [o for page in pages for o in page.objects if is_keyframe_key(o.key)]
            records_here += _resolve(cache, keyframes)
        for record in records_here:
            tally.add(record)
    return tally.finish()[base.rstrip("/")]


def _xattr_values(s: DeltaspaceStats) -> dict[str, str]:
    values = {
        "file-count": str(s.file_count),
        "delta-count": str(s.delta_count),
        "direct-count": str(s.direct_count),
        "plain-count": str(s.plain_count),
        "original-bytes": str(s.original_bytes),
        "stored-bytes": str(s.stored_bytes),
        "ratio": f"{s.ratio:.4f}",
        "saved-bytes": str(s.saved_bytes),
        "reference-size": str(s.reference_size),
        "policy": s.policy,
        "computed-at": iso_time(s.computed_at),
    }
    if s.reference_sha256:
        values["reference-sha256"] = s.reference_sha256
    return values


def format_xattrs(
    stats: DeltaspaceStats, root: bool = False, bucket: BucketStats | None = None
) -> dict[str, str]:
    """`user.dg.dir.*` for one directory; at the mount root also `user.dg.bucket.*`.

    `root=True` needs `bucket` (from `bucket_stats` over the mount prefix); the bucket's
    reference-size is the sum over its deltaspaces and it has no reference-sha256.
    """
    out = {DIR_XATTR_PREFIX + k: v for k, v in _xattr_values(stats).items()}
    if root:
        if bucket is None:
            raise ValueError("format_xattrs(root=True) needs the bucket stats")
        out.update({BUCKET_XATTR_PREFIX + k: v for k, v in _xattr_values(bucket.total).items()})
    return out


# ---------------------------------------------------------------- garbage collection


def remove_orphan(store: DeltaStore, ref_key: str) -> bool:
    """Delete an orphaned reference unless a delta is (or appears) in its deltaspace.

    The same protocol as DeltaStore.delete (References.remove_unused). True if removed.
    """
    return store.references.remove_unused(ref_key)


def remove_orphans(store: DeltaStore, keys: Iterable[str]) -> list[str]:
    """Delete orphaned references (reference.bin or hidden) unless used again; the removed.

    Hidden references go through `collect_keyframes` once per deltaspace (chains: links
    before parents, restored if a delta appears meanwhile)."""
    removed, spaces = [], set()
    for key in keys:
        if is_keyframe_key(key):
            spaces.add(_space_of(key))
        elif remove_orphan(store, key):
            removed.append(key)
    wanted = set(keys)
    for prefix in sorted(spaces):
        removed += [k for k in collect_keyframes(store, prefix) if k in wanted]
    return sorted(removed)
