"""The namespace cache: directory listings with a TTL, child lookups, negative answers,
directory marker attributes, and the bookkeeping that keeps cached listings in step with
local changes (writes, removals, renames)."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from core import layout
from core.deltastore import DeltaStore
from core.layout import Kind, ObjectRecord, PosixAttrs
from core.listing import DirListing
from core.metadata import RecordCache
from core.objectstore import ObjectInfo
from dgfs.dirstats import DirStats
from dgfs.inodes import InodeTable, Node
from dgfs.options import FsOptions
from dgfs.threads import Threads

log = logging.getLogger("dgfs.fs")

Entry = tuple[str, bool, ObjectRecord | None]  # name, is a directory, record (None: unsaved)

PREFETCH_PARALLEL = 4  # subdirectory listings fetched ahead at once (all directories)
PREFETCH_MAX = 64  # subdirectories of one listed directory fetched ahead, at most


def join(parent: str, name: str) -> str:
    """`parent/name` of two mount-relative paths ('' is the root)."""
    return f"{parent}/{name}" if parent else name


def moved_record(record: ObjectRecord, old: str, new: str) -> ObjectRecord:
    """A record after its directory moved from key prefix `old` to `new` (rename_prefix)."""

    def move(key: str | None) -> str | None:
        return new + key[len(old) :] if key and (key + "/").startswith(old + "/") else key

    meta = dict(record.metadata)
    if "dg-ref-key" in meta:
        meta["dg-ref-key"] = move(meta["dg-ref-key"])
    return replace(
        record,
        stored_key=move(record.stored_key),
        logical_key=move(record.logical_key),
        ref_key=move(record.ref_key),
        metadata=meta,
    )


def metadata_db_path(cache_base: Path, store: DeltaStore) -> Path:
    """The persisted metadata cache of one endpoint+bucket under the cache dir."""
    digest = hashlib.sha256(store.identity.encode()).hexdigest()[:16]
    return cache_base / f"metadata-{digest}.sqlite3"


@dataclass
class DirState:
    """A directory's last listing: logical names → listed objects, and when it was taken."""

    listing: DirListing
    fetched: float
    ahead: bool = False  # fetched ahead, not yet asked for


class Namespace:
    """What the mount knows of the bucket's tree: listings, records, marker attributes."""

    def __init__(
        self, store: DeltaStore, opts: FsOptions, inodes: InodeTable, threads: Threads
    ) -> None:
        self.store = store
        self.opts = opts
        self.inodes = inodes
        self.threads = threads
        self.records = RecordCache(
            store,
            db_path=metadata_db_path(opts.cache_base, store),
            dir_index=opts.dir_index,
            index_writes=opts.dir_index and not opts.read_only,
        )
        self.dirs: dict[str, DirState] = {}
        self.dir_stats = DirStats(store, self.records, self.key, opts.metadata_ttl, threads.limiter)
        self._warned: set[str] = set()
        self._fetching: dict[str, trio.Event] = {}  # listings in flight, by path
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_PARALLEL)
        self._changes = 0  # local changes to cached listings (a prefetch racing one is dropped)
        self.prefetched = 0  # listings fetched ahead and kept

    def close(self) -> None:
        """Persist and close the record cache."""
        self.records.close()

    def key(self, path: str) -> str:
        """The logical key of a mount-relative path."""
        return join(self.opts.prefix, path)

    def excluded(self, path: str) -> bool:
        """Whether `--exclude` hides this path."""
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.opts.exclude)

    def trusted(self, attrs: PosixAttrs) -> PosixAttrs:
        """Bucket attributes as this mount shows them (foreign special bits: `-o suid,dev`)."""
        mode = layout.trusted_mode(attrs, self.opts.suid, self.opts.dev)
        return replace(attrs, mode=mode, foreign=False)

    # ------------------------------------------------------------ listings

    def _fresh(self, path: str) -> DirState | None:
        state = self.dirs.get(path)
        if state is not None and time.monotonic() - state.fetched < self.opts.metadata_ttl:
            return state
        return None

    async def listing(self, path: str, refresh: bool = False) -> DirState:
        """The listing of a directory, re-listed when older than the metadata TTL (one
        fetched ahead and still in flight is waited for)."""
        if not refresh:
            state = self._fresh(path)
            if state is None and path in self._fetching:
                await self._fetching[path].wait()
                state = self._fresh(path)
            if state is not None:
                if state.ahead:  # what a listing does that is not left to a guess
                    state.ahead = False
                    self._note_empty_index(path, state.listing)
                    await self._cleanup(state.listing)
                return state
        state = await self._fetch(path, ahead=False)
        assert state is not None
        return state

    def _note_empty_index(self, path: str, listing: DirListing) -> None:
        """A directory listed empty but for its index: have the index dropped soon (not done
        for a listing fetched ahead: re-fetched every TTL by `ls` of the parent, it would
        keep postponing the index writer's quiet time)."""
        if listing.private and not listing.files and not listing.dirs:
            self.records.index_maybe_stale(self.key(path))  # it would keep the dir alive

    async def _cleanup(self, listing: DirListing) -> None:
        """Delete the older form of files listed as both `x` and `x.delta`."""
        if listing.stale and not self.opts.read_only:
            await self.threads.run(self.store.cleanup_stale, listing.stale)

    async def _fetch(self, path: str, ahead: bool) -> DirState | None:
        """LIST a directory (records prefetched per page) and cache the result. Fetched
        `ahead`, it is kept only if no local change happened meanwhile (None then): a file
        written here while the LIST ran must not vanish from a cached listing."""
        done, changes, now = trio.Event(), self._changes, time.monotonic()
        self._fetching.setdefault(path, done)
        try:
            listing = await self.threads.run(
                self.store.list_dir, self.key(path), self.records.prefetch
            )
            if ahead and (changes != self._changes or self._fresh(path) is not None):
                return None
            if not ahead:
                await self._cleanup(listing)
                self._note_empty_index(path, listing)
            for key in listing.skipped:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("%s: key cannot be shown as a file name; skipped", key)
            if self.opts.exclude:
                listing.files = {
                    n: o for n, o in listing.files.items() if not self.excluded(join(path, n))
                }
                listing.dirs = {n for n in listing.dirs if not self.excluded(join(path, n))}
            state = DirState(listing, now, ahead)
            self.dirs[path] = state
            return state
        finally:
            if self._fetching.get(path) is done:
                del self._fetching[path]
            done.set()

    def _fetch_ahead(self, path: str, names: set[str]) -> None:
        """Start LISTs of subdirectories not cached (a `find` or `ls -R` goes there next):
        in the background, a few at a time, their records' HEADs and index GETs started
        per LIST page as for any listing."""
        todo = sorted(
            join(path, n)
            for n in names
            if self._fresh(join(path, n)) is None and join(path, n) not in self._fetching
        )[:PREFETCH_MAX]
        if todo:
            trio.lowlevel.spawn_system_task(self._fetch_all_ahead, todo)

    async def _fetch_all_ahead(self, paths: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(self._fetch_one_ahead, path)

    async def _fetch_one_ahead(self, path: str) -> None:
        async with self._prefetch_limiter:
            if self._fresh(path) is not None or path in self._fetching:
                return
            try:
                if await self._fetch(path, ahead=True) is not None:
                    self.prefetched += 1
            except Exception as exc:  # only a guess: the real listing reports its errors
                log.debug("listing %s ahead failed: %s", path, exc)

    async def entries(self, path: str) -> list[Entry]:
        """A directory's entries sorted by name, with records and subdirectory attributes
        loaded, and files written here but not yet uploaded."""
        state = await self.listing(path)
        names = sorted(state.listing.files)
        objects = [state.listing.files[n] for n in names]
        records = await self.threads.run(self.records.resolve, objects)
        found: dict[str, Entry] = {}
        for name, record in zip(names, records, strict=True):
            if record is not None:
                found[name] = (name, False, record)
        for name in state.listing.dirs:
            found[name] = (name, True, None)
        await self._load_dir_attrs(path, state.listing.dirs)
        self._fetch_ahead(path, state.listing.dirs)
        for child in self.inodes.dirty_nodes():
            parent, _, name = (child.path or "").rpartition("/")
            if child.path and parent == path:
                found[name] = (name, False, None)
        return [found[n] for n in sorted(found)]

    async def child(self, parent_path: str, name: str) -> Node | None:
        """The node for `parent/name` (looked up in S3 if not known), or None if absent."""
        path = join(parent_path, name)
        known = self.inodes.by_path(path)
        if known is not None and (known.dirty or known.staging is not None):
            return known
        state = await self.listing(parent_path)
        if name in state.listing.dirs:
            node = self.inodes.node_for(path, True)
            if not node.dir_attrs_loaded:
                node.dir_attrs = await self.threads.run(self.marker_attrs, self.key(path))
                node.dir_attrs_loaded = True
            return node
        obj = state.listing.files.get(name)
        if obj is None:
            return None
        (record,) = await self.threads.run(self.records.resolve, [obj])
        if record is None:
            return None
        node = self.inodes.node_for(path, False)
        if not node.dirty:
            node.record = record
        return node

    def listed_absent(self, path: str) -> bool:
        """Whether a fresh listing of the parent shows no file or dir under this name."""
        parent, _, name = path.rpartition("/")
        state = self.dirs.get(parent)
        if state is None or time.monotonic() - state.fetched >= self.opts.metadata_ttl:
            return False
        return name not in state.listing.files and name not in state.listing.dirs

    def reference_size(self, path: str) -> int | None:
        """The size of a listed directory's reference.bin, if it has one."""
        state = self.dirs.get(path)
        if state is None or state.listing.reference is None:
            return None
        return state.listing.reference.size

    # ------------------------------------------------------------ directory attributes

    def marker_attrs(self, key: str) -> PosixAttrs:
        """A directory's attributes from its marker, as this mount shows them (blocking)."""
        return self.trusted(self.store.marker_attrs(key))

    async def _load_dir_attrs(self, path: str, names: set[str]) -> None:
        """Attributes of subdirectories from their markers (parallel HEADs), so readdirplus
        replies carry the stored mode and times rather than defaults."""
        todo = [n for n in names if not self._dir_attrs_known(join(path, n))]
        if not todo:
            return
        keys = [self.key(join(path, n)) for n in todo]
        found = await self.threads.run(lambda: list(self.records.map(self.marker_attrs, keys)))
        for name, attrs in zip(todo, found, strict=True):
            node = self.inodes.node_for(join(path, name), True)
            node.dir_attrs, node.dir_attrs_loaded = attrs, True

    def _dir_attrs_known(self, path: str) -> bool:
        node = self.inodes.by_path(path)
        return node is not None and node.is_dir and node.dir_attrs_loaded

    # ------------------------------------------------------------ local changes

    def note_file(self, path: str, record: ObjectRecord | None) -> None:
        """Keep the parent's cached listing in step with a local change (None = removed)."""
        self._changes += 1
        parent, _, name = path.rpartition("/")
        self.dir_stats.invalidate(parent)
        state = self.dirs.get(parent)
        if state is None:
            return
        if record is None:
            state.listing.files.pop(name, None)
            return
        self.records.remember(record)
        state.listing.files[name] = ObjectInfo(record.stored_key, record.stored_size, "", 0)
        if record.kind == Kind.DELTA and state.listing.reference is None:
            ref = self.store.references.known(layout.deltaspace_of(record.stored_key))
            if ref is not None:
                state.listing.reference = ObjectInfo(ref.key, ref.size, "", 0)

    def note_dir(self, path: str, present: bool) -> None:
        """Add a directory to (or drop it from) its parent's cached listing."""
        self._changes += 1
        parent, _, name = path.rpartition("/")
        state = self.dirs.get(parent)
        if state is not None:
            (state.listing.dirs.add if present else state.listing.dirs.discard)(name)

    def note_new_dir(self, path: str, node: Node, attrs: PosixAttrs) -> None:
        """A directory made here: known empty, with the attributes its marker got."""
        node.dir_attrs, node.dir_attrs_loaded = attrs, True
        self.note_dir(path, True)
        self.dirs[path] = DirState(DirListing(), time.monotonic())

    async def remove_dir(self, path: str) -> bool:
        """Remove a directory (its reference.bin, index and marker) if a fresh listing shows
        it empty and nothing below it waits for an upload; False if it is not empty."""
        state = await self.listing(path, refresh=True)
        pending = [n for n in self.inodes.dirty_nodes() if (n.path or "").startswith(path + "/")]
        if state.listing.files or state.listing.dirs or pending:
            return False
        ref = state.listing.reference
        if ref is not None and not await self._release_dir_reference(path, ref.key):
            return False
        key = self.key(path)
        if state.listing.private:  # a directory index would keep the directory alive
            await self.threads.run(self.store.remove_dir_index, key)
        await self.threads.run(self.store.remove_dir_marker, key)
        self.dirs.pop(path, None)
        self.note_dir(path, False)
        return True

    async def _release_dir_reference(self, path: str, ref_key: str) -> bool:
        """Delete an emptied directory's reference.bin by the delete protocol; False if a
        file appeared meanwhile (the protocol then keeps or restores the reference)."""
        if await self.threads.run(self.store.references.remove_unused, ref_key):
            return True
        return not (await self.listing(path, refresh=True)).listing.files

    async def move_dir(self, src: Node, dst: Node | None, new_path: str) -> None:
        """Rename directory `src` (its unsaved changes already stored) onto `new_path`,
        replacing the empty `dst`; TooManyObjects when over the rename limit."""
        old_path = src.path
        old_key, new_key = self.key(old_path), self.key(new_path)
        await self.threads.run(
            self.store.rename_prefix, old_key, new_key, self.opts.rename_dir_limit
        )
        if dst is not None:
            self.inodes.detach(dst)
        self.inodes.move(src, new_path)
        for node in self.inodes.nodes_below(new_path):
            if node.record is not None:
                node.record = moved_record(node.record, old_key, new_key)
                self.records.remember(node.record)
        for path in [p for p in self.dirs if p == old_path or p.startswith(old_path + "/")]:
            del self.dirs[path]
        self.dirs.pop(new_path, None)
        self.note_dir(old_path, False)
        self.note_dir(new_path, True)

    def forget_listings(self) -> None:
        """Drop every cached listing (files appeared behind the mount's back)."""
        self._changes += 1
        self.dirs.clear()
