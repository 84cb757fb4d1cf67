"""The pyfuse3 Operations: thin handlers that translate FUSE requests into core calls.

Every blocking call (boto3, xdelta3, hashing, cache crypto) runs in a worker thread under one
CapacityLimiter; the trio loop itself only touches in-memory state and small local file I/O.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyfuse3
import trio

from core import dirindex, layout
from core.cache import NotCacheable
from core.deltastore import DeltaStore, TooManyObjects
from core.errors import DgError, InvalidName, NotFound
from core.layout import Kind, ObjectRecord, PosixAttrs
from core.listing import DirListing
from core.metadata import RecordCache
from core.objectstore import ObjectInfo
from core.reader import check_record
from dgfs import xattrs
from dgfs.dirstats import DirStats
from dgfs.errors import errno_for, guard_all
from dgfs.inodes import InodeTable, Node
from dgfs.options import FsOptions
from dgfs.staging import StagingArea, orphaned_count, recover

log = logging.getLogger("dgfs.fs")

BLOCK = 512
ATTR_DELAY = 1.0  # seconds an attribute change may wait to be coalesced
# rsync creates `.NAME.XXXXXX` with O_EXCL (mkstemp), sets its attributes, renames it to NAME
TEMP_FILE_PATTERN = re.compile(r"\.[^/]+\.[A-Za-z0-9]{6}")
STATFS_BLOCKS = 2**40 // 4096


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _fuse_error(errno.EINVAL) from None


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
    ident = f"{store.store.settings.endpoint_url or 'aws'}|{store.store.bucket}"
    return cache_base / f"metadata-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.sqlite3"


@dataclass
class DirState:
    """A directory's last listing: logical names → listed objects, and when it was taken."""

    listing: DirListing
    fetched: float
    records: dict[str, ObjectRecord] = field(default_factory=dict)


@dataclass
class Handle:
    """An open file: its node, whether it may write, and a pinned cache entry for reads."""

    node: Node
    writable: bool
    entry: object | None = None


@guard_all
class DgfsOperations(pyfuse3.Operations):
    """A bucket/prefix as a directory tree (see docs/SEMANTICS.md for each operation)."""

    supports_dot_lookup = False

    def __init__(self, store: DeltaStore, cache, opts: FsOptions, staging: StagingArea) -> None:
        super().__init__()
        self.store = store
        self.cache = cache
        self.opts = opts
        self.staging = staging
        self.records = RecordCache(
            store,
            db_path=metadata_db_path(opts.cache_base, store),
            dir_index=opts.dir_index,
            index_writes=opts.dir_index and not opts.read_only,
        )
        self.inodes = InodeTable()
        self.dirs: dict[str, DirState] = {}
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, tuple[str, list[tuple[str, bool, ObjectRecord | None]]]] = {}
        self._fh = itertools.count(1)
        self.limiter = trio.CapacityLimiter(opts.max_threads)
        self.failed_uploads: dict[str, str] = {}
        self.owner_uid = os.getuid()
        self.recovery: dict = {"state": "pending"}  # crash recovery at mount: `dgfs status`
        self.started_ns = time.time_ns()
        self._warned: set[str] = set()
        self.dir_stats = DirStats(store, self.records, self._key, opts.metadata_ttl, self.limiter)

    # ------------------------------------------------------------ helpers

    async def _run(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

    def _key(self, path: str) -> str:
        return _join(self.opts.prefix, path)

    def _check_writable(self) -> None:
        if self.opts.read_only:
            raise _fuse_error(errno.EROFS)

    async def _dir(self, path: str, refresh: bool = False) -> DirState:
        """The listing of a directory, re-listed when older than the metadata TTL."""
        state = self.dirs.get(path)
        now = time.monotonic()
        if state is not None and not refresh and now - state.fetched < self.opts.metadata_ttl:
            return state
        listing = await self._run(self.store.list_dir, self._key(path), self.records.prefetch)
        if listing.stale and not self.opts.read_only:
            await self._run(self.store.cleanup_stale, listing.stale)
        if listing.private and not listing.files and not listing.dirs:
            self.records.index_maybe_stale(self._key(path))  # it would keep the dir alive
        for key in listing.skipped:
            if key not in self._warned:
                self._warned.add(key)
                log.warning("%s: key cannot be shown as a file name; skipped", key)
        if self.opts.exclude:
            listing.files = {
                n: o for n, o in listing.files.items() if not self._excluded(_join(path, n))
            }
            listing.dirs = {n for n in listing.dirs if not self._excluded(_join(path, n))}
        state = DirState(listing, now)
        self.dirs[path] = state
        return state

    async def _record(self, state: DirState, name: str) -> ObjectRecord | None:
        obj = state.listing.files.get(name)
        if obj is None:
            return None
        (record,) = await self._run(self.records.resolve, [obj])
        return record

    def _note_file(self, path: str, record: ObjectRecord | None) -> None:
        """Keep the parent's cached listing in step with a local change (None = removed)."""
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

    def _listed_absent(self, path: str) -> bool:
        """Whether a fresh listing of the parent shows no file or dir under this name."""
        parent, _, name = path.rpartition("/")
        state = self.dirs.get(parent)
        if state is None or time.monotonic() - state.fetched >= self.opts.metadata_ttl:
            return False
        return name not in state.listing.files and name not in state.listing.dirs

    def _note_dir(self, path: str, present: bool) -> None:
        parent, _, name = path.rpartition("/")
        state = self.dirs.get(parent)
        if state is not None:
            (state.listing.dirs.add if present else state.listing.dirs.discard)(name)

    def _trusted(self, attrs: PosixAttrs) -> PosixAttrs:
        """Bucket attributes as this mount shows them (foreign special bits: `-o suid,dev`)."""
        mode = layout.trusted_mode(attrs, self.opts.suid, self.opts.dev)
        return replace(attrs, mode=mode, foreign=False)

    def _file_mode(self, mode: int | None, record: ObjectRecord | None, default: int) -> int:
        """A file's st_mode: never a directory; a symlink only when its record can be one."""
        mode = mode or default
        kind = stat.S_IFMT(mode)
        fake_link = kind == stat.S_IFLNK and not (record is not None and record.is_symlink)
        return stat.S_IFREG | stat.S_IMODE(mode) if kind in (0, stat.S_IFDIR) or fake_link else mode

    def _effective_attrs(self, node: Node) -> PosixAttrs:
        base = self._trusted(node.record.attrs) if node.record is not None else PosixAttrs()
        pending = node.pending or PosixAttrs()
        return PosixAttrs(
            mode=pending.mode if pending.mode is not None else base.mode,
            uid=pending.uid if pending.uid is not None else base.uid,
            gid=pending.gid if pending.gid is not None else base.gid,
            mtime_ns=pending.mtime_ns if pending.mtime_ns is not None else base.mtime_ns,
        )

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = e.attr_timeout = self.opts.metadata_ttl
        e.st_blksize = 128 * 1024
        if node.is_dir:
            a = node.dir_attrs
            default_mode = stat.S_IFDIR | (0o777 & ~self.opts.umask)
            e.st_mode = stat.S_IFDIR | (stat.S_IMODE(a.mode) if a.mode else default_mode & 0o7777)
            e.st_nlink = 2
            e.st_size = 0
            state = self.dirs.get(node.path) if node.path is not None else None
            if state is not None and state.listing.reference is not None:
                # du counts a directory's own blocks: let them be its reference.bin, so that
                # `du -s dir` is what S3 stores for it
                e.st_blocks = (state.listing.reference.size + BLOCK - 1) // BLOCK
            mtime = a.mtime_ns or self.started_ns
        else:
            a = self._effective_attrs(node)
            default_mode = stat.S_IFREG | (0o666 & ~self.opts.umask)
            record = node.record
            e.st_mode = self._file_mode(a.mode, record, default_mode)
            e.st_nlink = 1
            if node.staging is not None:
                e.st_size = os.fstat(node.fd).st_size
                stored = e.st_size
            else:
                e.st_size = max(record.original_size, 0) if record else 0
                stored = record.stored_size if record else 0
            e.st_blocks = (stored + BLOCK - 1) // BLOCK
            mtime = a.mtime_ns or (record.last_modified_ns if record else 0) or self.started_ns
        e.st_uid = a.uid if a.uid is not None else self.opts.uid
        e.st_gid = a.gid if a.gid is not None else self.opts.gid
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = mtime
        return e

    def _lookup_reply(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self._entry(node)

    def _negative(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.opts.metadata_ttl
        return e

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise _fuse_error(errno.ENOENT)
        return node

    def _path_of(self, node: Node) -> str:
        if node.path is None:
            raise _fuse_error(errno.ENOENT)
        return node.path

    async def _child(self, parent: Node, name: str) -> Node | None:
        """The node for `parent/name` (looked up in S3 if not known), or None if absent."""
        path = _join(self._path_of(parent), name)
        known = self.inodes.by_path(path)
        if known is not None and (known.dirty or known.staging is not None):
            return known
        state = await self._dir(self._path_of(parent))
        if name in state.listing.dirs:
            node = self.inodes.node_for(path, True)
            if not node.dir_attrs_loaded:
                node.dir_attrs = await self._dir_marker_attrs(path)
                node.dir_attrs_loaded = True
            return node
        record = await self._record(state, name)
        if record is None:
            return None
        node = self.inodes.node_for(path, False)
        if not node.dirty:
            node.record = record
        return node

    async def _dir_marker_attrs(self, path: str) -> PosixAttrs:
        return await self._run(self._marker_attrs, self._key(path))

    def _marker_attrs(self, key: str) -> PosixAttrs:
        try:
            info = self.store.store.head(key + "/")
        except NotFound:
            return PosixAttrs()
        meta = layout.decode_metadata(info.metadata or {})
        return self._trusted(layout.posix_attrs_from(meta, key + "/"))

    async def _load_dir_attrs(self, path: str, names: set[str]) -> None:
        """Attributes of subdirectories from their markers (parallel HEADs), so readdirplus
        replies carry the stored mode and times rather than defaults."""
        todo = [n for n in names if not self._dir_attrs_known(_join(path, n))]
        if not todo:
            return
        keys = [self._key(_join(path, n)) for n in todo]
        found = await self._run(lambda: list(self.records.map(self._marker_attrs, keys)))
        for name, attrs in zip(todo, found, strict=True):
            node = self.inodes.node_for(_join(path, name), True)
            node.dir_attrs, node.dir_attrs_loaded = attrs, True

    def _dir_attrs_known(self, path: str) -> bool:
        node = self.inodes.by_path(path)
        return node is not None and node.is_dir and node.dir_attrs_loaded

    # ------------------------------------------------------------ staging and uploads

    async def _ensure_staging(self, node: Node, keep_content: bool = True) -> None:
        """Give a file a private local copy to write to (materialising its content if asked)."""
        if node.staging is not None:
            if not keep_content:
                os.ftruncate(node.fd, 0)
            return
        path, fd = self.staging.new_file()
        try:
            if keep_content and node.record is not None and node.record.original_size != 0:
                await self._run(self._materialize, node.record, path)
        except BaseException:
            os.close(fd)
            self.staging.remove(path)
            raise
        node.staging, node.fd = path, fd

    def _make_dirty(self, node: Node) -> None:
        """Mark a file's staged content as not yet in S3 (recorded for crash recovery)."""
        node.pending = replace(node.pending or PosixAttrs(), mtime_ns=time.time_ns())
        if not node.dirty and node.staging is not None and node.path is not None:
            self._mark_staged(node, node.path)
        node.dirty = True

    def _mark_staged(self, node: Node, path: str) -> None:
        """Record for crash recovery where a dirty file belongs and which object it replaces."""
        base = (node.record.stored_key, node.record.etag) if node.record is not None else None
        self.staging.mark_dirty(node.staging, self._key(path), self._effective_attrs(node), base)

    def _materialize(self, record: ObjectRecord, path: Path) -> None:
        try:
            entry = self.store.reader.open_cached(record)
        except NotCacheable:
            self.store.reader.reconstruct(record, path)
            return
        with entry:
            entry.copy_to(path)

    async def _upload(self, node: Node) -> None:
        """Store a dirty file; on failure keep the staged data and raise the errno."""
        async with node.lock:
            if not node.dirty or node.path is None:
                return
            key = self._key(node.path)
            attrs = self._effective_attrs(node)
            if attrs.mtime_ns is None:
                attrs = replace(attrs, mtime_ns=time.time_ns())
            xattr_values = self._user_xattrs(node)
            try:
                record = await self._run(
                    functools.partial(
                        self.store.put,
                        node.staging,
                        key,
                        attrs,
                        xattr_values,
                        node.record,
                        known_new=node.record is None and self._listed_absent(node.path),
                    )
                )
            except Exception as exc:
                code = errno_for(exc)
                node.upload_error = code
                self.failed_uploads[key] = str(exc)
                log.error("upload %s failed: %s; data kept in %s", key, exc, node.staging)
                raise _fuse_error(code) from None
            node.record, node.dirty, node.pending, node.upload_error = record, False, None, None
            node.xattrs, node.defer_until = None, 0.0
            node.attrs_dirty = False
            self.staging.mark_clean(node.staging)
            self.failed_uploads.pop(key, None)
            self._note_file(node.path, record)

    async def _drop_staging(self, node: Node) -> None:
        """After the last close of a clean file: move its content into the cache, free staging."""
        if node.staging is None or node.dirty or node.open_handles:
            return
        path, fd = node.staging, node.fd
        node.staging, node.fd = None, -1
        os.close(fd)
        if node.record is not None and node.record.sha256 and self.cache is not None:
            try:
                entry = await self._run(self.cache.insert_file, path, node.record.sha256)
                entry.close()
            except Exception as exc:
                log.info("cache insert of %s skipped: %s", node.record.stored_key, exc)
        self.staging.remove(path)

    async def _upload_closed(self, node: Node) -> None:
        """Upload a file nobody writes any more, then move its content out of staging."""
        await self._upload(node)
        await self._drop_staging(node)

    def _discard_pending(self, node: Node) -> None:
        """The file is gone (unlinked or replaced): its staged changes must not be uploaded."""
        if node.staging is not None:
            self.staging.mark_clean(node.staging)
        node.dirty = False
        node.attrs_dirty = False
        node.defer_until = 0.0

    async def flush_all(self) -> list[str]:
        """Upload every dirty file (at unmount); returns the keys that still failed."""
        failed = []
        for node in self.inodes.dirty_nodes():
            try:
                await self._upload(node)
            except pyfuse3.FUSEError:
                failed.append(self._key(node.path or "?"))
        for node in self.inodes.attr_pending_nodes():
            try:
                await self._apply_attrs(node)
            except pyfuse3.FUSEError:
                failed.append(self._key(node.path or "?") + " (attributes)")
        return failed

    async def recover_staged(self) -> None:
        """Background task at mount: store what dead daemons left staged (dgfs/staging.py);
        a read-only mount leaves it for a writable one."""
        base, endpoint = self.opts.cache_base, self.staging.endpoint
        if self.opts.read_only:
            left = await self._run(orphaned_count, base)
            if left:
                log.warning(
                    "%d staged file(s) of a previous daemon left for a writable mount", left
                )
            self.recovery = {"state": "skipped (read-only mount)", "left": left}
            return
        self.recovery = {"state": "running"}
        bucket, upload = self.staging.bucket, self.store.put_if_unchanged
        try:
            report = await self._run(recover, base, bucket, endpoint, upload)
        except Exception as exc:  # the staged files stay where they are, for the next mount
            log.exception("crash recovery failed")
            self.recovery = {"state": f"failed: {exc}"}
            return
        self.dirs.clear()  # recovered files show at the next listing
        self.recovery = {"state": "done", "report": report}

    async def retry_failed_uploads(self) -> None:
        """Background task: retry dirty files nobody has open (after a failed close)."""
        while True:
            await trio.sleep(self.opts.retry_interval)
            for node in self.inodes.dirty_nodes():
                if node.writers == 0 and node.path is not None and not node.defer_until:
                    try:
                        await self._upload_closed(node)
                        log.info("upload of %s succeeded on retry", self._key(node.path))
                    except pyfuse3.FUSEError:
                        continue

    # ------------------------------------------------------------ lookup and attributes

    async def lookup(self, parent_inode, name, ctx):
        node = await self._child(self._node(parent_inode), _name(name))
        return self._negative() if node is None else self._lookup_reply(node)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    async def getattr(self, inode, ctx):
        return self._entry(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        self._check_writable()
        if fields.update_size:
            if node.is_dir:
                raise _fuse_error(errno.EISDIR)
            async with node.lock:
                await self._ensure_staging(node, keep_content=attr.st_size > 0)
                os.ftruncate(node.fd, attr.st_size)
                self._make_dirty(node)
        new = self._effective_attrs(node) if not node.is_dir else node.dir_attrs
        if fields.update_mode:
            kind = stat.S_IFMT(new.mode or 0) or (stat.S_IFDIR if node.is_dir else stat.S_IFREG)
            new = replace(new, mode=kind | stat.S_IMODE(attr.st_mode))
        if fields.update_uid:
            new = replace(new, uid=attr.st_uid)
        if fields.update_gid:
            new = replace(new, gid=attr.st_gid)
        if fields.update_mtime:
            new = replace(new, mtime_ns=attr.st_mtime_ns)
        changed_attrs = fields.update_mode or fields.update_uid or fields.update_gid
        changed_attrs = changed_attrs or fields.update_mtime
        if node.is_dir:
            if changed_attrs:
                await self._run(self.store.make_dir, self._key(self._path_of(node)), new)
                node.dir_attrs = new
        elif node.dirty or node.record is None:
            node.pending = new
            if node.writers == 0 and not node.defer_until:
                await self._upload(node)
        elif changed_attrs:
            # coalesced: applied by one self-copy within ATTR_DELAY, or folded into a rename
            # (rsync's chmod/utimes/chown then rename cost one copy, not four)
            node.pending = new
            if not node.attrs_dirty:
                node.attrs_dirty, node.attrs_since = True, time.monotonic()
        return self._entry(node)

    async def _apply_attrs(self, node: Node) -> None:
        """Write coalesced attribute changes of a clean file (one self-copy)."""
        async with node.lock:
            if not node.attrs_dirty or node.dirty or node.record is None or node.path is None:
                return
            attrs = self._effective_attrs(node)
            try:
                node.record = await self._run(self.store.set_attrs, node.record, attrs)
            except DgError as exc:
                log.warning("attributes of %s not stored: %s", node.record.stored_key, exc)
                raise _fuse_error(errno_for(exc)) from None
            node.attrs_dirty, node.pending = False, None
            self.records.remember(node.record)

    async def apply_pending_attrs(self) -> None:
        """Background task: write coalesced attribute changes after ATTR_DELAY, and temp
        files whose rename did not come within `temp_upload_delay`."""
        while True:
            await trio.sleep(ATTR_DELAY / 4)
            now = time.monotonic()
            for node in self.inodes.dirty_nodes():
                if node.defer_until and node.defer_until <= now and node.writers == 0:
                    node.defer_until = 0.0
                    try:
                        await self._upload_closed(node)
                    except pyfuse3.FUSEError:
                        pass  # logged by _upload; retried by retry_failed_uploads
            due = now - ATTR_DELAY
            for node in self.inodes.attr_pending_nodes():
                if node.attrs_since > due:
                    continue
                try:
                    await self._apply_attrs(node)
                except pyfuse3.FUSEError:
                    log.warning("attributes of %s not stored yet; retrying", node.path)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = STATFS_BLOCKS
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------ directories

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        path = self._path_of(node)
        state = await self._dir(path)
        names = sorted(state.listing.files)
        records = await self._run(self.records.resolve, [state.listing.files[n] for n in names])
        entries: dict[str, tuple[str, bool, ObjectRecord | None]] = {}
        for name, record in zip(names, records, strict=True):
            if record is not None:
                entries[name] = (name, False, record)
        for name in state.listing.dirs:
            entries[name] = (name, True, None)
        await self._load_dir_attrs(path, state.listing.dirs)
        for child in self.inodes.dirty_nodes():
            parent, _, name = (child.path or "").rpartition("/")
            if child.path and parent == path:
                entries[name] = (name, False, None)
        fh = next(self._fh)
        self.dir_handles[fh] = (path, [entries[n] for n in sorted(entries)])
        return fh

    async def readdir(self, fh, start_id, token):
        path, entries = self.dir_handles[fh]
        for index in range(start_id, len(entries)):
            name, is_dir, record = entries[index]
            node = self.inodes.node_for(_join(path, name), is_dir)
            if record is not None and not node.dirty:
                node.record = record
            if not pyfuse3.readdir_reply(token, name.encode(), self._entry(node), index + 1):
                return
            node.lookups += 1

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def mkdir(self, parent_inode, name, mode, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        name_s = _name(name)
        path = _join(self._path_of(parent), name_s)
        if await self._child(parent, name_s) is not None:
            raise _fuse_error(errno.EEXIST)
        self._check_name(path)
        mode, gid = self._inherit_setgid(parent, stat.S_IMODE(mode), ctx.gid, is_dir=True)
        attrs = PosixAttrs(stat.S_IFDIR | mode, ctx.uid, gid, time.time_ns())
        await self._run(self.store.make_dir, self._key(path), attrs)
        node = self.inodes.node_for(path, True)
        node.dir_attrs, node.dir_attrs_loaded = attrs, True
        self._note_dir(path, True)
        self.dirs[path] = DirState(DirListing(), time.monotonic())
        return self._lookup_reply(node)

    def _inherit_setgid(self, parent: Node, mode: int, gid: int, is_dir: bool) -> tuple[int, int]:
        """In a set-group-ID directory new entries take its group (and dirs keep the bit)."""
        parent_attrs = self._entry(parent)
        if not parent_attrs.st_mode & stat.S_ISGID:
            return mode, gid
        return (mode | stat.S_ISGID if is_dir else mode), parent_attrs.st_gid

    def _excluded(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.opts.exclude)

    def _check_name(self, path: str) -> None:
        if self._excluded(path):
            raise _fuse_error(errno.EPERM)
        try:
            layout.check_logical_name(self._key(path))
        except InvalidName as exc:
            log.warning("refused name: %s", exc)
            raise _fuse_error(errno.EINVAL) from None

    async def rmdir(self, parent_inode, name, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = _join(self._path_of(parent), _name(name))
        node = await self._child(parent, _name(name))
        if node is None:
            raise _fuse_error(errno.ENOENT)
        if not node.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        state = await self._dir(path, refresh=True)
        pending = [n for n in self.inodes.dirty_nodes() if (n.path or "").startswith(path + "/")]
        if state.listing.files or state.listing.dirs or pending:
            raise _fuse_error(errno.ENOTEMPTY)
        ref = state.listing.reference
        if ref is not None and not await self._release_dir_reference(path, ref.key):
            raise _fuse_error(errno.ENOTEMPTY)
        if state.listing.private:  # a directory index would keep the directory alive
            await self._run(self.store.store.delete, dirindex.index_key(self._key(path)))
        await self._run(self.store.remove_dir_marker, self._key(path))
        self.dirs.pop(path, None)
        self._note_dir(path, False)
        self.inodes.detach(node)

    async def _release_dir_reference(self, path: str, ref_key: str) -> bool:
        """Delete an emptied directory's reference.bin by the delete protocol; False if a
        file appeared meanwhile (the protocol then keeps or restores the reference)."""
        if await self._run(self.store.references.remove_unused, ref_key):
            return True
        return not (await self._dir(path, refresh=True)).listing.files

    # ------------------------------------------------------------ files

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = _join(self._path_of(parent), _name(name))
        self._check_name(path)
        node = self.inodes.node_for(path, False)
        if node.record is None and not node.dirty:
            existing = await self._child(parent, _name(name))
            node = existing if existing is not None else node
        file_mode, gid = self._inherit_setgid(parent, stat.S_IMODE(mode), ctx.gid, is_dir=False)
        node.pending = PosixAttrs(stat.S_IFREG | file_mode, ctx.uid, gid, time.time_ns())
        node.created_excl = bool(flags & os.O_EXCL)
        await self._ensure_staging(node, keep_content=False)
        self._make_dirty(node)
        fh = self._open_handle(node, writable=True)
        return pyfuse3.FileInfo(fh=fh), self._lookup_reply(node)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not stat.S_ISREG(mode):
            raise _fuse_error(errno.EPERM)
        info, entry = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        await self.release(info.fh)
        return entry

    def _open_handle(self, node: Node, writable: bool) -> int:
        fh = next(self._fh)
        self.handles[fh] = Handle(node, writable)
        node.open_handles += 1
        node.writers += writable
        return fh

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            raise _fuse_error(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._check_writable()
        truncating = writable and flags & os.O_TRUNC
        if node.record is not None and not node.dirty and not truncating:
            check_record(node.record)  # metadata that cannot describe real content: EIO, logged
        if truncating:
            async with node.lock:
                await self._ensure_staging(node, keep_content=False)
                self._make_dirty(node)
        fh = self._open_handle(node, writable)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    async def read(self, fh, off, size):
        handle = self.handles[fh]
        node = handle.node
        if node.staging is not None:
            return os.pread(node.fd, size, off)
        if node.record is None or node.record.original_size == 0:
            return b""
        if handle.entry is None:
            try:
                handle.entry = await self._run(self.store.reader.open_cached, node.record)
            except NotCacheable:  # too big for a memory-only cache: read from a private copy
                async with node.lock:
                    await self._ensure_staging(node)
                return os.pread(node.fd, size, off)
        return await self._run(handle.entry.read, off, size)

    async def write(self, fh, off, buf):
        handle = self.handles[fh]
        node = handle.node
        async with node.lock:
            await self._ensure_staging(node)
            written = os.pwrite(node.fd, buf, off)
            self._make_dirty(node)
        return written

    async def flush(self, fh):
        handle = self.handles[fh]
        if handle.writable and handle.node.dirty and not self._defer(handle.node):
            await self._upload(handle.node)

    async def fsync(self, fh, datasync):
        node = self.handles[fh].node
        if node.dirty:
            await self._upload(node)
        await self._apply_attrs(node)

    def _defer(self, node: Node) -> bool:
        """Whether a closed temp file waits for its rename instead of uploading now.

        rsync creates `.NAME.XXXXXX` (O_EXCL), closes it, sets mode and times, then renames
        it: uploading at the rename stores it once under its final name (1 PUT instead of
        PUT + COPY + DELETE); a failed upload is then reported by rename(). Uploaded anyway
        after `temp_upload_delay` seconds, at fsync() and at unmount; once such an upload
        failed, the next close() uploads (and reports) again instead of waiting.
        """
        if self.opts.temp_upload_delay <= 0 or node.path is None:
            return False
        if not node.created_excl or node.upload_error is not None:
            return False
        if not TEMP_FILE_PATTERN.fullmatch(node.path.rpartition("/")[2]):
            return False
        if not node.defer_until:
            node.defer_until = time.monotonic() + self.opts.temp_upload_delay
        return True

    async def release(self, fh):
        handle = self.handles.pop(fh)
        node = handle.node
        if handle.entry is not None:
            handle.entry.close()
        node.open_handles -= 1
        node.writers -= handle.writable
        idle = node.writers == 0 and node.path is not None and node.upload_error is None
        if node.dirty and idle and not self._defer(node):
            try:
                await self._upload(node)
            except pyfuse3.FUSEError:
                pass  # kept dirty and retried in the background
        # after a failed flush, close() has already reported it: the background task retries
        await self._drop_staging(node)
        self.inodes.release(node)

    async def unlink(self, parent_inode, name, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        node = await self._child(parent, _name(name))
        if node is None:
            raise _fuse_error(errno.ENOENT)
        if node.is_dir:
            raise _fuse_error(errno.EISDIR)
        path = self._path_of(node)
        async with node.lock:  # an upload in flight lands first: unlink deletes its object
            if node.record is not None:
                await self._run(self.store.delete, node.record)
                self.records.forget(node.record.stored_key)
            self._discard_pending(node)
        if node.open_handles == 0 and node.staging is not None:  # free its space now
            os.close(node.fd)
            self.staging.remove(node.staging)
            node.staging, node.fd = None, -1
        self._note_file(path, None)
        self.inodes.detach(node)

    # ------------------------------------------------------------ symlinks and links

    async def symlink(self, parent_inode, name, target, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = _join(self._path_of(parent), _name(name))
        self._check_name(path)
        if await self._child(parent, _name(name)) is not None:
            raise _fuse_error(errno.EEXIST)
        attrs = PosixAttrs(stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, time.time_ns())
        tmp, fd = self.staging.new_file()
        try:
            os.write(fd, target)
            record = await self._run(self.store.put, tmp, self._key(path), attrs, None, None, True)
        finally:
            os.close(fd)
            self.staging.remove(tmp)
        node = self.inodes.node_for(path, False)
        node.record = record
        self._note_file(path, record)
        return self._lookup_reply(node)

    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not node.is_symlink:
            raise _fuse_error(errno.EINVAL)
        key = node.record.stored_key
        data = await self._run(self.store.store.get_bytes, key, 0, layout.PATH_MAX)
        if len(data) > layout.PATH_MAX:  # replaced by a large object since its HEAD
            log.error("%s: symlink body larger than %d bytes", key, layout.PATH_MAX)
            raise _fuse_error(errno.EIO)
        if node.record.sha256 and hashlib.sha256(data).hexdigest() != node.record.sha256:
            log.error("%s: symlink target fails its sha256", node.record.stored_key)
            raise _fuse_error(errno.EIO)
        return data

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise _fuse_error(errno.EPERM)

    # ------------------------------------------------------------ rename

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._check_writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        src = await self._child(old_parent, _name(name_old))
        if src is None:
            raise _fuse_error(errno.ENOENT)
        new_path = _join(self._path_of(new_parent), _name(name_new))
        self._check_name(new_path)
        dst = await self._child(new_parent, _name(name_new))
        if dst is src:
            return
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise _fuse_error(errno.EEXIST)
        if src.is_dir:
            await self._rename_dir(src, dst, new_path)
        else:
            await self._rename_file(src, dst, new_path)

    async def _rename_file(self, src: Node, dst: Node | None, new_path: str) -> None:
        if dst is not None and dst.is_dir:
            raise _fuse_error(errno.EISDIR)
        old_path = self._path_of(src)
        # an upload of the replaced file in flight lands first (its object is then replaced)
        async with src.lock, dst.lock if dst is not None else contextlib.nullcontext():
            replaced = dst.record if dst is not None else None
            if src.record is not None and not src.dirty:
                new_key = self._key(new_path)
                attrs = self._effective_attrs(src) if src.attrs_dirty else None
                known_new = replaced is None and self._listed_absent(new_path)
                src.record = await self._run(
                    self.store.rename, src.record, new_key, replaced, attrs, known_new
                )
                src.attrs_dirty, src.pending = False, None
            else:
                # unsaved writes: the pending upload goes to the new name and must carry this
                # file's attributes, not those of the file it replaces
                src.pending = self._effective_attrs(src)
                src.xattrs = self._user_xattrs(src)
                if src.record is not None:
                    await self._run(self.store.delete, src.record)
                src.record = replaced
            if dst is not None:
                self._discard_pending(dst)
                self.inodes.detach(dst)
            self.inodes.move(src, new_path)
            if src.dirty and src.staging is not None:
                self._mark_staged(src, new_path)
        self._note_file(old_path, None)
        if src.defer_until:
            src.defer_until = 0.0
            await self._upload_closed(src)  # its error is rename()'s: close() did not report one
        if src.record is not None and not src.dirty:
            self._note_file(new_path, src.record)

    async def _rename_dir(self, src: Node, dst: Node | None, new_path: str) -> None:
        old_path = self._path_of(src)
        if dst is not None:
            if not dst.is_dir:
                raise _fuse_error(errno.ENOTDIR)
            state = await self._dir(new_path, refresh=True)
            if state.listing.files or state.listing.dirs:
                raise _fuse_error(errno.ENOTEMPTY)
        below = old_path + "/"
        for node in self.inodes.dirty_nodes():
            if (node.path or "").startswith(below):
                await self._upload(node)
        for node in self.inodes.attr_pending_nodes():
            if (node.path or "").startswith(below):
                await self._apply_attrs(node)
        try:
            await self._run(
                self.store.rename_prefix,
                self._key(old_path),
                self._key(new_path),
                self.opts.rename_dir_limit,
            )
        except TooManyObjects as exc:
            log.info("rename %s: %s; returning EXDEV so the caller copies", old_path, exc)
            raise _fuse_error(errno.EXDEV) from None
        if dst is not None:
            self.inodes.detach(dst)
        self.inodes.move(src, new_path)
        old_key, new_key = self._key(old_path), self._key(new_path)
        for node in self.inodes.nodes_below(new_path):
            if node.record is not None:
                node.record = moved_record(node.record, old_key, new_key)
                self.records.remember(node.record)
        for path in [p for p in self.dirs if p == old_path or p.startswith(old_path + "/")]:
            del self.dirs[path]
        self.dirs.pop(new_path, None)
        self._note_dir(old_path, False)
        self._note_dir(new_path, True)

    # ------------------------------------------------------------ extended attributes

    async def _xattr_values(self, node: Node) -> dict[str, bytes]:
        """Every extended attribute of a node: storage facts, user attributes, mount status."""
        values: dict[str, bytes] = {}
        if node.record is not None and not node.is_dir:
            values.update({k: v.encode() for k, v in xattrs.file_xattrs(node.record).items()})
        if not node.is_dir:
            values.update(self._user_xattrs(node))
        if node.is_dir and node.path is not None:
            figures = await self.dir_stats.values(node.path, root=node.ino == pyfuse3.ROOT_INODE)
            values.update({k: v.encode() for k, v in figures.items()})
        if node.ino == pyfuse3.ROOT_INODE:
            values[xattrs.STATUS_NAME] = json.dumps(self.status()).encode()
        return values

    def status(self, show_keys: bool = True) -> dict:
        """What `dgfs status` shows: pending and failed uploads, S3 requests, cache figures.

        Without `show_keys` (another user than the mount's owner or root asking, under
        allow_other), the upload lists are replaced by their lengths.
        """
        dirty = self.inodes.dirty_nodes()
        values = {
            "pending_uploads": sorted(self._key(n.path) for n in dirty if n.path is not None),
            "pending_attributes": sorted(
                self._key(n.path) for n in self.inodes.attr_pending_nodes() if n.path is not None
            ),
            "failed_uploads": dict(self.failed_uploads),
            "s3_requests": dict(self.store.store.requests),
            "delta_attempts_skipped": self.store.backoff.skipped,
            "recovery": dict(self.recovery),
            "cache": self.cache.stats().as_dict() if self.cache is not None else {},
        }
        if not show_keys:
            for name in xattrs.KEY_LISTS:
                values[name] = len(values[name])
            values["recovery"] = {"state": self.recovery.get("state", "")}
            values["keys_hidden"] = True
        return values

    async def getxattr(self, inode, name, ctx):
        node, name_s = self._node(inode), name.decode(errors="surrogateescape")
        if node.ino == pyfuse3.ROOT_INODE and name_s == xattrs.STATUS_NAME:
            # without computing (and counting) stats; key names for the mount's owner only
            show_keys = ctx.uid in (0, self.owner_uid)
            return json.dumps(self.status(show_keys)).encode()
        if not name_s.startswith(xattrs.USER_PREFIX):
            # only the user namespace is supported (as setxattr says): ENOTSUP, not ENODATA,
            # lets `ls -l` stop probing ACLs/SELinux labels after the first file of the mount
            # (coreutils caches "unsupported" per device) instead of 2 requests per file
            raise _fuse_error(errno.ENOTSUP)
        if node.is_dir and not xattrs.is_dg_name(name_s):
            raise _fuse_error(pyfuse3.ENOATTR)  # a directory has only user.dg.* values
        value = (await self._xattr_values(node)).get(name_s)
        if value is None:
            raise _fuse_error(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode, ctx):
        names = await self._xattr_values(self._node(inode))
        # the status JSON changes with every request: listed, its size could change between
        # getfattr's size probe and its read (ERANGE); `dgfs status` asks for it by name
        return [n.encode(errors="surrogateescape") for n in names if n != xattrs.STATUS_NAME]

    async def setxattr(self, inode, name, value, ctx):
        self._check_writable()
        node = self._node(inode)
        name_s = name.decode(errors="surrogateescape")
        if name_s == xattrs.FLUSH_NAME and node.ino == pyfuse3.ROOT_INODE:
            if await self.flush_all():
                raise _fuse_error(errno.EIO)
            return
        if xattrs.is_dg_name(name_s):
            return  # read-only view: writes are ignored so cp -a / rsync -aX keep working
        if not xattrs.is_user_name(name_s) or node.is_dir:
            raise _fuse_error(errno.ENOTSUP)
        await self._set_user_xattrs(node, {**self._user_xattrs(node), name_s: value})

    async def removexattr(self, inode, name, ctx):
        self._check_writable()
        node = self._node(inode)
        name_s = name.decode(errors="surrogateescape")
        current = self._user_xattrs(node)
        if name_s not in current:
            raise _fuse_error(pyfuse3.ENOATTR)
        del current[name_s]
        await self._set_user_xattrs(node, current)

    def _user_xattrs(self, node: Node) -> dict[str, bytes]:
        """User xattrs as the file has them now (unsaved ones of a file being written first)."""
        if node.xattrs is not None:
            return dict(node.xattrs)
        return dict(node.record.xattrs) if node.record is not None else {}

    async def _set_user_xattrs(self, node: Node, values: dict[str, bytes]) -> None:
        if node.dirty or node.record is None:
            node.xattrs = values  # carried by the pending upload
            return
        attrs = self._effective_attrs(node)
        node.record = await self._run(self.store.set_attrs, node.record, attrs, values)
        node.attrs_dirty, node.pending = False, None
        self.records.remember(node.record)
