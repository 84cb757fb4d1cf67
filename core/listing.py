"""Listing one directory level: logical names from LIST pages, and which of `x` and `x.delta`
is the file when both exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core import layout
from core.errors import NotFound
from core.layout import Kind, ObjectRecord
from core.objectstore import ObjectInfo, ObjectStore

# ns stamp of the writer's clock on every object dgfs writes: decides between `x` and `x.delta`
# when their LastModified (1 s resolution) ties
META_WRITTEN = "dgfs-written"


@dataclass
class DirListing:
    """One level of a prefix, from LIST only (no HEAD): logical names to stored objects."""

    files: dict[str, ObjectInfo] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    markers: dict[str, ObjectInfo] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    ties: dict[str, ObjectInfo] = field(default_factory=dict)  # name → the other form (same second)
    skipped: list[str] = field(default_factory=list)
    reference: ObjectInfo | None = None
    private: bool = False  # the directory has a hidden `.dgfs/` sub-prefix (keyframes, index)


def valid_segment(name: str) -> bool:
    return bool(name) and name not in (".", "..") and len(name.encode()) <= 255 and "\0" not in name


def list_level(
    objects: ObjectStore,
    head: Callable[[str], ObjectRecord],
    prefix: str,
    on_page: Callable[[list[ObjectInfo]], None] | None = None,
) -> DirListing:
    """One directory level (prefix '' = root) from LIST pages (`head` only on a tie).

    `on_page(objects)`, if given, is called with each page's file objects as it arrives
    (so metadata HEADs can overlap the rest of the listing).

    Hidden: references, `.deltaglider/`, `.dgfs/`. Skipped (reported): names that cannot be
    file names, and a file whose name is also a directory (the directory wins). When both
    `x` and `x.delta` exist the newer wins and the other is listed in `stale`.
    """
    base = f"{prefix}/" if prefix else ""
    listing = DirListing()
    for page in objects.list_pages(base):
        for p in page.prefixes:
            name = p[len(base) : -1]
            if name in layout.HIDDEN_SEGMENTS:
                listing.private = listing.private or name == ".dgfs"
                continue
            if valid_segment(name):
                listing.dirs.add(name)
            else:
                listing.skipped.append(p)
        for obj in page.objects:
            _classify(listing, base, obj)
        if on_page is not None:
            on_page(
                [
                    o
                    for o in page.objects
                    if not o.key.endswith("/") and not layout.is_hidden_key(o.key)
                ]
            )
    for name, other in listing.ties.items():
        listing.files[name] = _settle_tie(head, listing.files[name], other)
    for name in list(listing.files):
        if name in listing.dirs:
            listing.skipped.append(listing.files.pop(name).key)
    return listing


def _classify(listing: DirListing, base: str, obj: ObjectInfo) -> None:
    name = obj.key[len(base) :]
    if name == "":
        listing.markers[""] = obj  # the directory's own marker
        return
    if name == layout.REFERENCE_NAME:
        listing.reference = obj
        return
    logical = name[: -len(layout.DELTA_SUFFIX)] if name.endswith(layout.DELTA_SUFFIX) else name
    if not valid_segment(logical):
        listing.skipped.append(obj.key)
        return
    other = listing.files.get(logical)
    if other is None:
        listing.files[logical] = obj
        return
    # to the second: S3's resolution (some servers list milliseconds, HEAD says seconds)
    seconds, other_seconds = obj.last_modified_ns // 10**9, other.last_modified_ns // 10**9
    if seconds == other_seconds:
        listing.ties[logical] = obj
        return
    newer, older = (obj, other) if seconds > other_seconds else (other, obj)
    listing.files[logical] = newer
    listing.stale.append(older.key)


def _settle_tie(
    head: Callable[[str], ObjectRecord], first: ObjectInfo, second: ObjectInfo
) -> ObjectInfo:
    """Of `x` and `x.delta` listed with the same LastModified, the one to show (HEADs)."""
    found = {}
    for obj in (first, second):
        try:
            found[obj.key] = head(obj.key)
        except NotFound:
            continue
    if not found:
        return first
    winner = newest_form(list(found.values()))
    return first if winner.stored_key == first.key else second


def _written_ns(record: ObjectRecord) -> int | None:
    return layout.parse_int(record.metadata.get(META_WRITTEN, ""), 0, layout.MAX_SIZE)


def newest_form(records: list[ObjectRecord]) -> ObjectRecord:
    """Of a file's forms with the same LastModified: the later `dgfs-written` stamp when
    every form has one, else the plain `x` (deltaglider reads it first)."""
    stamps = [_written_ns(r) for r in records]
    if None not in stamps and len(set(stamps)) == len(stamps):
        return records[stamps.index(max(stamps))]
    return next((r for r in records if r.kind != Kind.DELTA), records[0])
