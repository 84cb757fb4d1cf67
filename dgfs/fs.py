"""The pyfuse3 Operations: each FUSE request translated into calls on the namespace cache
(dgfs/namespace.py) and the write-back engine (dgfs/writeback.py), with errors mapped to errnos
(dgfs/errors.py) and replies built as EntryAttributes.

Every blocking call (boto3, xdelta3, hashing, cache crypto) runs in a worker thread under one
CapacityLimiter (dgfs/threads.py); the trio loop itself only touches in-memory state and small
local file I/O.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, replace

import pyfuse3

from core import layout
from core.cache import NotCacheable
from core.deltastore import DeltaStore, TooManyObjects
from core.errors import InvalidName
from core.layout import ObjectRecord, PosixAttrs
from core.reader import check_record
from dgfs import xattrs
from dgfs.errors import guard_all
from dgfs.inodes import InodeTable, Node
from dgfs.namespace import Entry, Namespace, join
from dgfs.options import FsOptions
from dgfs.staging import StagingArea
from dgfs.status import mount_status
from dgfs.threads import Threads
from dgfs.writeback import WriteBack

log = logging.getLogger("dgfs.fs")

BLOCK = 512
NAME_MAX = 255  # bytes per name, as statfs says (the kernel leaves the check to us)
STATFS_BLOCKS = 2**40 // 4096


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _name(raw: bytes) -> str:
    if len(raw) > NAME_MAX:
        raise _fuse_error(errno.ENAMETOOLONG)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _fuse_error(errno.EINVAL) from None


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
        self.threads = Threads(opts.max_threads)
        self.inodes = InodeTable()
        self.namespace = Namespace(store, opts, self.inodes, self.threads)
        self.writeback = WriteBack(store, cache, staging, self.namespace, opts, self.threads)
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, tuple[str, list[Entry]]] = {}
        self._fh = itertools.count(1)
        self.owner_uid = os.getuid()
        self.started_ns = time.time_ns()
        self.read_requests = 0  # FUSE reads served (those the page cache did not answer)

    # ------------------------------------------------------------ helpers

    def status(self, show_keys: bool = True) -> dict:
        """What `dgfs status` shows (dgfs/status.py)."""
        return {
            **mount_status(self.writeback, self.store, self.cache, show_keys),
            "read_requests": self.read_requests,
            "listings_fetched_ahead": self.namespace.prefetched,
        }

    def _key(self, path: str) -> str:
        return self.namespace.key(path)

    def _check_writable(self) -> None:
        if self.opts.read_only:
            raise _fuse_error(errno.EROFS)

    def _check_name(self, path: str) -> None:
        if self.namespace.excluded(path):
            raise _fuse_error(errno.EPERM)
        try:
            layout.check_logical_name(self._key(path))
        except InvalidName as exc:
            log.warning("refused name: %s", exc)
            raise _fuse_error(errno.EINVAL) from None

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
        return await self.namespace.child(self._path_of(parent), name)

    def _file_mode(self, mode: int | None, record: ObjectRecord | None, default: int) -> int:
        """A file's st_mode: never a directory; a symlink only when its record can be one; a
        device, FIFO or socket only when its object is empty (mknod stores them so)."""
        mode = mode or default
        kind = stat.S_IFMT(mode)
        fake_link = kind == stat.S_IFLNK and not (record is not None and record.is_symlink)
        fake_special = layout.is_special(kind) and record is not None and record.original_size != 0
        if kind in (0, stat.S_IFDIR) or fake_link or fake_special:
            return stat.S_IFREG | stat.S_IMODE(mode)
        return mode

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
            ref_size = self.namespace.reference_size(node.path) if node.path is not None else None
            if ref_size is not None:
                # du counts a directory's own blocks: let them be its reference.bin, so that
                # `du -s dir` is what S3 stores for it
                e.st_blocks = (ref_size + BLOCK - 1) // BLOCK
            mtime = a.mtime_ns or self.started_ns
            ctime = a.ctime_ns or mtime
            if node.touched_ns > ctime:  # an entry added or removed (not stored: in memory)
                mtime = ctime = node.touched_ns
        else:
            a = self.writeback.effective_attrs(node)
            default_mode = stat.S_IFREG | (0o666 & ~self.opts.umask)
            record = node.record
            e.st_mode = self._file_mode(a.mode, record, default_mode)
            e.st_nlink = 0 if node.path is None else 1  # unlinked while open: fstat says 0
            if node.staging is not None:
                e.st_size = os.fstat(node.fd).st_size
                stored = e.st_size
            else:
                e.st_size = max(record.original_size, 0) if record else 0
                stored = record.stored_size if record else 0
            e.st_blocks = (stored + BLOCK - 1) // BLOCK
            mtime = a.mtime_ns or (record.last_modified_ns if record else 0) or self.started_ns
            ctime = a.ctime_ns or mtime
            if stat.S_ISCHR(e.st_mode) or stat.S_ISBLK(e.st_mode):
                e.st_rdev = a.rdev or 0
        e.st_uid = a.uid if a.uid is not None else self.opts.uid
        e.st_gid = a.gid if a.gid is not None else self.opts.gid
        e.st_mtime_ns = mtime
        e.st_atime_ns = a.atime_ns if a.atime_ns is not None else mtime
        e.st_ctime_ns = ctime
        return e

    def _lookup_reply(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self._entry(node)

    def _negative(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.opts.metadata_ttl
        return e

    def _touch(self, *dirs: Node) -> None:
        """An entry was added to or removed from these directories: their mtime and ctime
        advance (in memory, for the life of the mount: storing them would cost a PUT per
        create or unlink)."""
        now = time.time_ns()
        for node in dirs:
            node.touched_ns = now

    def _inherit_setgid(self, parent: Node, mode: int, gid: int, is_dir: bool) -> tuple[int, int]:
        """In a set-group-ID directory new entries take its group (and dirs keep the bit)."""
        parent_attrs = self._entry(parent)
        if not parent_attrs.st_mode & stat.S_ISGID:
            return mode, gid
        return (mode | stat.S_ISGID if is_dir else mode), parent_attrs.st_gid

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
            await self.writeback.truncate(node, attr.st_size)
        new = self.writeback.effective_attrs(node) if not node.is_dir else node.dir_attrs
        now = time.time_ns()
        if fields.update_size:
            new = replace(new, mtime_ns=now, ctime_ns=now)
        if fields.update_mode:
            kind = stat.S_IFMT(new.mode or 0) or (stat.S_IFDIR if node.is_dir else stat.S_IFREG)
            new = replace(new, mode=kind | stat.S_IMODE(attr.st_mode))
        if fields.update_uid:
            new = replace(new, uid=attr.st_uid)
        if fields.update_gid:
            new = replace(new, gid=attr.st_gid)
        if fields.update_mtime:
            new = replace(new, mtime_ns=attr.st_mtime_ns)
        if fields.update_atime:
            new = replace(new, atime_ns=attr.st_atime_ns)
        changed = fields.update_mode or fields.update_uid or fields.update_gid
        changed = changed or fields.update_mtime or fields.update_atime
        if changed or fields.update_size:
            new = replace(new, ctime_ns=now)  # every change of the inode
        if not node.is_dir:
            await self.writeback.set_attrs(node, new, changed)
        elif changed:
            await self.threads.run(self.store.make_dir, self._key(self._path_of(node)), new)
            node.dir_attrs = new
        return self._entry(node)

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
        fh = next(self._fh)
        self.dir_handles[fh] = (path, await self.namespace.entries(path))
        return fh

    async def readdir(self, fh, start_id, token):
        path, entries = self.dir_handles[fh]
        for index in range(start_id, len(entries)):
            name, is_dir, record = entries[index]
            node = self.inodes.node_for(join(path, name), is_dir)
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
        path = join(self._path_of(parent), name_s)
        if await self._child(parent, name_s) is not None:
            raise _fuse_error(errno.EEXIST)
        self._check_name(path)
        mode, gid = self._inherit_setgid(parent, stat.S_IMODE(mode), ctx.gid, is_dir=True)
        now = time.time_ns()
        attrs = PosixAttrs(stat.S_IFDIR | mode, ctx.uid, gid, now, ctime_ns=now)
        await self.threads.run(self.store.make_dir, self._key(path), attrs)
        node = self.inodes.node_for(path, True)
        self.namespace.note_new_dir(path, node, attrs)
        self._touch(parent)
        return self._lookup_reply(node)

    async def rmdir(self, parent_inode, name, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = join(self._path_of(parent), _name(name))
        node = await self._child(parent, _name(name))
        if node is None:
            raise _fuse_error(errno.ENOENT)
        if not node.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        if not await self.namespace.remove_dir(path):
            raise _fuse_error(errno.ENOTEMPTY)
        self.inodes.detach(node)
        self._touch(parent)

    # ------------------------------------------------------------ files

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = join(self._path_of(parent), _name(name))
        self._check_name(path)
        node = self.inodes.node_for(path, False)
        if node.record is None and not node.dirty:
            existing = await self._child(parent, _name(name))
            node = existing if existing is not None else node
        file_mode, gid = self._inherit_setgid(parent, stat.S_IMODE(mode), ctx.gid, is_dir=False)
        now = time.time_ns()
        attrs = PosixAttrs(stat.S_IFREG | file_mode, ctx.uid, gid, now, ctime_ns=now)
        await self.writeback.start_new(node, attrs, excl=bool(flags & os.O_EXCL))
        self._touch(parent)
        fh = self._open_handle(node, writable=True)
        return pyfuse3.FileInfo(fh=fh), self._lookup_reply(node)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if stat.S_ISREG(mode) or not stat.S_IFMT(mode):
            info, entry = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
            await self.writeback.made_by_mknod(self.handles[info.fh].node)
            await self.release(info.fh)
            return entry
        if not layout.is_special(stat.S_IFMT(mode)):
            raise _fuse_error(errno.EINVAL)
        # a device, FIFO or socket: an empty object whose dgfs-mode carries the type (and
        # dgfs-rdev the device number); the kernel does FIFO and socket I/O itself
        self._check_writable()
        parent = self._node(parent_inode)
        name_s = _name(name)
        path = join(self._path_of(parent), name_s)
        self._check_name(path)
        if await self._child(parent, name_s) is not None:
            raise _fuse_error(errno.EEXIST)
        perm, gid = self._inherit_setgid(parent, stat.S_IMODE(mode), ctx.gid, is_dir=False)
        now = time.time_ns()
        is_dev = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        attrs = PosixAttrs(stat.S_IFMT(mode) | perm, ctx.uid, gid, now, ctime_ns=now)
        attrs = replace(attrs, rdev=rdev) if is_dev else attrs
        record = await self.writeback.store_body(self._key(path), b"", attrs)
        node = self.inodes.node_for(path, False)
        node.record = record
        self.namespace.note_file(path, record)
        self._touch(parent)
        return self._lookup_reply(node)

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
            await self.writeback.truncate(node, 0)
        keep_cache = self._page_cache_valid(node, writable)
        fh = self._open_handle(node, writable)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    def _page_cache_valid(self, node: Node, writable: bool) -> bool:
        """Whether the kernel may keep the file's cached pages at this open (`keep_cache`).

        An open without it drops them, so afterwards the page cache holds only what is read
        through handles opened on the record current at that open: remembered in
        `page_cache_of` as the record's identity (stored key, ETag, SHA-256, size). The next
        read-only open of the same record keeps the pages (a second read never reaches the
        daemon); a record replaced since (seen by a lookup after the metadata TTL, or written
        here) drops them. Writers, unsaved content and handles still open on an older record
        make the pages untrusted until a later open drops them (a clean staged copy, kept
        until the writer's release, is the record's content).
        """
        record = node.record
        if writable or record is None or node.dirty or node.writers:
            node.page_cache_of = None
            return False
        ident = (record.stored_key, record.etag, record.sha256, record.original_size)
        if node.page_cache_of == ident:
            return True
        # other handles open on this node may still fill pages from what they opened
        node.page_cache_of = ident if node.open_handles == 0 else None
        return False

    async def read(self, fh, off, size):
        self.read_requests += 1
        handle = self.handles[fh]
        node = handle.node
        if node.staging is not None:
            return os.pread(node.fd, size, off)
        if node.record is None or node.record.original_size == 0:
            return b""
        if handle.entry is None:
            try:
                handle.entry = await self.threads.run(self.store.reader.open_cached, node.record)
            except NotCacheable:  # too big for a memory-only cache: read from a private copy
                await self.writeback.stage(node)
                return os.pread(node.fd, size, off)
        return await self.threads.run(handle.entry.read, off, size)

    async def write(self, fh, off, buf):
        return await self.writeback.write(self.handles[fh].node, off, buf)

    async def flush(self, fh):
        handle = self.handles[fh]
        if handle.writable:
            await self.writeback.flush(handle.node)

    async def fsync(self, fh, datasync):
        await self.writeback.fsync(self.handles[fh].node)

    async def release(self, fh):
        handle = self.handles.pop(fh)
        node = handle.node
        if handle.entry is not None:
            handle.entry.close()
        node.open_handles -= 1
        node.writers -= handle.writable
        await self.writeback.closed(node)
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
        await self.writeback.remove(node)
        self.namespace.note_file(path, None)
        self.inodes.detach(node)
        self._touch(parent)

    # ------------------------------------------------------------ symlinks and links

    async def symlink(self, parent_inode, name, target, ctx):
        self._check_writable()
        parent = self._node(parent_inode)
        path = join(self._path_of(parent), _name(name))
        self._check_name(path)
        if await self._child(parent, _name(name)) is not None:
            raise _fuse_error(errno.EEXIST)
        now = time.time_ns()
        attrs = PosixAttrs(stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, now, ctime_ns=now)
        record = await self.writeback.store_body(self._key(path), target, attrs)
        node = self.inodes.node_for(path, False)
        node.record = record
        self.namespace.note_file(path, record)
        self._touch(parent)
        return self._lookup_reply(node)

    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not node.is_symlink:
            raise _fuse_error(errno.EINVAL)
        return await self.threads.run(self.store.read_link_body, node.record, layout.PATH_MAX)

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
        new_path = join(self._path_of(new_parent), _name(name_new))
        self._check_name(new_path)
        dst = await self._child(new_parent, _name(name_new))
        if dst is src:
            return
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise _fuse_error(errno.EEXIST)
        if src.is_dir:
            await self._rename_dir(src, dst, new_path)
            src.touched_ns = time.time_ns()  # its ctime (its `..` changed)
        elif dst is not None and dst.is_dir:
            raise _fuse_error(errno.EISDIR)
        else:
            await self.writeback.rename_file(src, dst, new_path)
        self._touch(old_parent, new_parent)

    async def _rename_dir(self, src: Node, dst: Node | None, new_path: str) -> None:
        old_path = self._path_of(src)
        if dst is not None:
            if not dst.is_dir:
                raise _fuse_error(errno.ENOTDIR)
            state = await self.namespace.listing(new_path, refresh=True)
            if state.listing.files or state.listing.dirs:
                raise _fuse_error(errno.ENOTEMPTY)
        await self.writeback.flush_below(old_path)
        try:
            await self.namespace.move_dir(src, dst, new_path)
        except TooManyObjects as exc:
            log.info("rename %s: %s; returning EXDEV so the caller copies", old_path, exc)
            raise _fuse_error(errno.EXDEV) from None

    # ------------------------------------------------------------ extended attributes

    async def _xattr_values(self, node: Node) -> dict[str, bytes]:
        """Every extended attribute of a node: storage facts, user attributes, mount status."""
        values: dict[str, bytes] = {}
        if node.record is not None and not node.is_dir:
            values.update({k: v.encode() for k, v in xattrs.file_xattrs(node.record).items()})
        if not node.is_dir:
            values.update(self.writeback.user_xattrs(node))
        if node.is_dir and node.path is not None:
            figures = await self.namespace.dir_stats.values(
                node.path, root=node.ino == pyfuse3.ROOT_INODE
            )
            values.update({k: v.encode() for k, v in figures.items()})
        if node.ino == pyfuse3.ROOT_INODE:
            values[xattrs.STATUS_NAME] = json.dumps(self.status()).encode()
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
            if await self.writeback.flush_all():
                raise _fuse_error(errno.EIO)
            return
        if xattrs.is_dg_name(name_s):
            return  # read-only view: writes are ignored so cp -a / rsync -aX keep working
        if not xattrs.is_user_name(name_s) or node.is_dir:
            raise _fuse_error(errno.ENOTSUP)
        values = {**self.writeback.user_xattrs(node), name_s: value}
        await self.writeback.set_user_xattrs(node, values)

    async def removexattr(self, inode, name, ctx):
        self._check_writable()
        node = self._node(inode)
        name_s = name.decode(errors="surrogateescape")
        current = self.writeback.user_xattrs(node)
        if name_s not in current:
            raise _fuse_error(pyfuse3.ENOATTR)
        del current[name_s]
        await self.writeback.set_user_xattrs(node, current)
