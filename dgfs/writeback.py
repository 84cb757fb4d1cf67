"""The write-back engine: staged copies of written files, dirty state, uploads and their
retries, temp-file deferral, coalesced attribute changes and crash recovery.

A written file gets a private staging file (dgfs/staging.py) that holds its current content;
it is uploaded at close (or later: a temp file waits for its rename, a failed upload is
retried in the background) and moved into the content cache once clean. Failures are raised
as UploadFailed(errno) after logging; the staged data is kept.

In async mode (`--write-back async`) close() only makes the staged copy durable; the upload,
the same one, runs in the background (dgfs/uploadqueue.py) and fsync() waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import fields, replace
from pathlib import Path

import trio

from core.cache import NotCacheable
from core.deltastore import DeltaStore
from core.errors import DgError
from core.layout import ObjectRecord, PosixAttrs, deltaspace_of
from dgfs.errors import ErrnoError, errno_for
from dgfs.inodes import Node
from dgfs.namespace import Namespace
from dgfs.options import FsOptions
from dgfs.staging import StagingArea, orphaned_count, recover
from dgfs.threads import Threads
from dgfs.uploadqueue import UploadQueue

log = logging.getLogger("dgfs.fs")

ATTR_DELAY = 1.0  # seconds an attribute change may wait to be coalesced
# rsync creates `.NAME.XXXXXX` with O_EXCL (mkstemp), sets its attributes, renames it to NAME
_ATTR_FIELDS = tuple(f.name for f in fields(PosixAttrs) if f.name != "foreign")
TEMP_FILE_PATTERN = re.compile(r"\.[^/]+\.[A-Za-z0-9]{6}")


class UploadFailed(ErrnoError):
    """A file's content or attributes could not be stored (logged; staged data kept)."""


class WriteBack:
    """Dirty files of one mount and their way to S3."""

    def __init__(
        self,
        store: DeltaStore,
        cache,
        staging: StagingArea,
        namespace: Namespace,
        opts: FsOptions,
        threads: Threads,
    ) -> None:
        self.store = store
        self.cache = cache
        self.staging = staging
        self.namespace = namespace
        self.inodes = namespace.inodes
        self.opts = opts
        self.threads = threads
        self.failed_uploads: dict[str, str] = {}  # key → why its last upload failed
        self.recovery: dict = {"state": "pending"}  # crash recovery at mount: `dgfs status`
        self.queue = UploadQueue(opts.upload_workers)
        self.asynchronous = opts.write_back == "async"

    # ------------------------------------------------------------ attributes as they are now

    def effective_attrs(self, node: Node) -> PosixAttrs:
        """A file's attributes: unsaved changes over the stored ones."""
        record = node.record
        base = self.namespace.trusted(record.attrs) if record is not None else PosixAttrs()
        if node.pending is None:
            return base
        pending = node.pending
        changed = {k: v for k in _ATTR_FIELDS if (v := getattr(pending, k)) is not None}
        return replace(base, **changed)

    def user_xattrs(self, node: Node) -> dict[str, bytes]:
        """User xattrs as the file has them now (unsaved ones of a file being written first)."""
        if node.xattrs is not None:
            return dict(node.xattrs)
        return dict(node.record.xattrs) if node.record is not None else {}

    def pending_keys(self) -> tuple[list[str], list[str]]:
        """Keys of files with unsaved content, and of clean files with unsaved attributes."""
        key = self.namespace.key
        uploads = [key(n.path) for n in self.inodes.dirty_nodes() if n.path is not None]
        attrs = [key(n.path) for n in self.inodes.attr_pending_nodes() if n.path is not None]
        return sorted(uploads), sorted(attrs)

    # ------------------------------------------------------------ staging

    async def start_new(self, node: Node, attrs: PosixAttrs, excl: bool) -> None:
        """A file created (or re-created) empty with these attributes."""
        async with node.lock:  # an upload of its staged copy in flight lands first
            node.pending = attrs
            node.created_excl = excl
            await self._ensure_staging(node, keep_content=False)
            self._make_dirty(node)

    async def write(self, node: Node, off: int, buf: bytes) -> int:
        """Write into the file's staged copy; returns the bytes written."""
        async with node.lock:
            await self._ensure_staging(node)
            written = os.pwrite(node.fd, buf, off)
            self._make_dirty(node)
        return written

    async def truncate(self, node: Node, size: int) -> None:
        """Set the file's size (its staged copy holds the content kept)."""
        async with node.lock:
            await self._ensure_staging(node, keep_content=size > 0)
            os.ftruncate(node.fd, size)
            self._make_dirty(node)

    async def stage(self, node: Node) -> None:
        """Give the file a private local copy of its content (to read what the cache won't
        hold)."""
        async with node.lock:
            await self._ensure_staging(node)

    async def _ensure_staging(self, node: Node, keep_content: bool = True) -> None:
        """Give a file a private local copy to write to (materialising its content if asked)."""
        if node.staging is not None:
            if not keep_content:
                os.ftruncate(node.fd, 0)
            return
        path, fd = self.staging.new_file()
        try:
            if keep_content and node.record is not None and node.record.original_size != 0:
                await self.threads.run(self._materialize, node.record, path)
        except BaseException:
            os.close(fd)
            self.staging.remove(path)
            raise
        node.staging, node.fd = path, fd

    def _materialize(self, record: ObjectRecord, path: Path) -> None:
        try:
            entry = self.store.reader.open_cached(record)
        except NotCacheable:
            self.store.reader.reconstruct(record, path)
            return
        with entry:
            entry.copy_to(path)

    def _make_dirty(self, node: Node) -> None:
        """Mark a file's staged content as not yet in S3 (recorded for crash recovery)."""
        now = time.time_ns()
        node.pending = replace(node.pending or PosixAttrs(), mtime_ns=now, ctime_ns=now)
        if not node.dirty and node.staging is not None and node.path is not None:
            self._mark_staged(node, node.path)
        node.dirty = True

    def _recovery_info(self, node: Node, path: str) -> tuple:
        """Where a dirty file belongs, its attributes and the object it replaces."""
        base = (node.record.stored_key, node.record.etag) if node.record is not None else None
        return self.namespace.key(path), self.effective_attrs(node), base

    def _mark_staged(self, node: Node, path: str) -> None:
        """Record for crash recovery where a dirty file belongs and which object it replaces."""
        self.staging.mark_dirty(node.staging, *self._recovery_info(node, path))

    async def _make_durable(self, node: Node) -> None:
        """Async mode: the staged content and its recovery record survive a crash."""
        async with node.lock:
            if not node.dirty or node.staging is None or node.path is None:
                return
            info = self._recovery_info(node, node.path)
            await self.threads.run(self.staging.make_durable, node.staging, node.fd, *info)

    def _submit(self, node: Node) -> None:
        """Async mode: upload a closed dirty file in the background."""
        self.queue.submit(node, self._background_upload)

    async def _background_upload(self, node: Node) -> None:
        """One queued upload; a file opened for writing again (or a temp file waiting for
        its rename) is left to its next close. A failure keeps the data and is retried by
        `retry_failed_uploads`; fsync() reports it."""
        if node.writers or node.path is None or node.defer_until:
            return
        retry = node.upload_error is not None
        space = deltaspace_of(self.namespace.key(node.path))
        known = self.store.references.known
        async with self.queue.first_in(space, lambda: known(space) is not None):
            with contextlib.suppress(UploadFailed):
                await self._upload_closed(node)
                if retry:
                    log.info("upload of %s succeeded on retry", node.path)
        self.inodes.release(node)  # clean now: forgotten unless the kernel still knows it

    async def _drop_staging(self, node: Node) -> None:
        """After the last close of a clean file: move its content into the cache, free staging."""
        if node.staging is None or node.dirty or node.open_handles:
            return
        path, fd = node.staging, node.fd
        node.staging, node.fd = None, -1
        os.close(fd)
        if node.record is not None and node.record.sha256 and self.cache is not None:
            try:
                entry = await self.threads.run(self.cache.insert_file, path, node.record.sha256)
                entry.close()
            except Exception as exc:
                log.info("cache insert of %s skipped: %s", node.record.stored_key, exc)
        self.staging.remove(path)

    def _discard(self, node: Node) -> None:
        """The file is gone (unlinked or replaced): its staged changes must not be uploaded."""
        if node.staging is not None:
            self.staging.mark_clean(node.staging)
        node.dirty = False
        node.attrs_dirty = False
        node.defer_until = 0.0

    # ------------------------------------------------------------ uploads

    async def upload(self, node: Node) -> None:
        """Store a dirty file; on failure keep the staged data and raise UploadFailed."""
        async with node.lock:
            if not node.dirty or node.path is None:
                return
            key = self.namespace.key(node.path)
            attrs = self.effective_attrs(node)
            if attrs.mtime_ns is None:
                attrs = replace(attrs, mtime_ns=time.time_ns())
            known_new = node.record is None and self.namespace.listed_absent(node.path)
            try:
                record = await self.threads.run(
                    self.store.put,
                    node.staging,
                    key,
                    attrs,
                    self.user_xattrs(node),
                    node.record,
                    known_new=known_new,
                )
            except Exception as exc:
                code = errno_for(exc)
                node.upload_error = code
                self.failed_uploads[key] = str(exc)
                log.error("upload %s failed: %s; data kept in %s", key, exc, node.staging)
                raise UploadFailed(code, str(exc)) from None
            node.record, node.dirty, node.pending, node.upload_error = record, False, None, None
            node.xattrs, node.defer_until = None, 0.0
            node.attrs_dirty = False
            self.staging.mark_clean(node.staging)
            self.failed_uploads.pop(key, None)
            self.namespace.note_file(node.path, record)

    async def _upload_closed(self, node: Node) -> None:
        """Upload a file nobody writes any more, then move its content out of staging."""
        await self.upload(node)
        await self._drop_staging(node)

    def defer(self, node: Node) -> bool:
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

    async def flush(self, node: Node) -> None:
        """close() of a writable handle: upload now unless the file is a deferred temp file;
        in async mode make its staged copy durable instead (uploaded after its release)."""
        if not node.dirty:
            return
        if self.asynchronous:
            await self._make_durable(node)
        elif not self.defer(node):
            await self.upload(node)

    async def made_by_mknod(self, node: Node) -> None:
        """A regular file made by mknod (no close() follows): in async mode durable before
        the reply, as a closed file is (sync mode uploads it at its release)."""
        if self.asynchronous:
            await self._make_durable(node)

    async def fsync(self, node: Node) -> None:
        """Store content and attributes now."""
        if node.dirty:
            await self.upload(node)
        await self.apply_attrs(node)

    async def closed(self, node: Node) -> None:
        """After a handle closed: upload once no writer is left (a failure is retried in the
        background, close() having reported it already) and free a clean staged copy; in
        async mode the upload is queued."""
        idle = node.writers == 0 and node.path is not None
        if node.dirty and idle and self.asynchronous and not self.defer(node):
            self._submit(node)
            return
        if node.dirty and idle and node.upload_error is None and not self.defer(node):
            with contextlib.suppress(UploadFailed):
                await self.upload(node)
        await self._drop_staging(node)

    async def flush_below(self, path: str) -> None:
        """Store every unsaved change below a directory (before it is renamed)."""
        below = path + "/"
        for node in self.inodes.dirty_nodes():
            if (node.path or "").startswith(below):
                await self.upload(node)
        for node in self.inodes.attr_pending_nodes():
            if (node.path or "").startswith(below):
                await self.apply_attrs(node)

    async def flush_all(self) -> list[str]:
        """Upload every dirty file (at unmount); returns the keys that still failed."""
        failed = []
        for node in self.inodes.dirty_nodes():
            try:
                await self.upload(node)
            except UploadFailed:
                failed.append(self.namespace.key(node.path or "?"))
        for node in self.inodes.attr_pending_nodes():
            try:
                await self.apply_attrs(node)
            except UploadFailed:
                failed.append(self.namespace.key(node.path or "?") + " (attributes)")
        return failed

    async def store_body(self, key: str, body: bytes, attrs: PosixAttrs) -> ObjectRecord:
        """Store a symlink (its body is its target) or a device, FIFO or socket (empty body);
        always direct."""
        tmp, fd = self.staging.new_file()
        try:
            os.write(fd, body)
            return await self.threads.run(self.store.put, tmp, key, attrs, None, None, True)
        finally:
            os.close(fd)
            self.staging.remove(tmp)

    # ------------------------------------------------------------ removal and rename

    async def remove(self, node: Node) -> None:
        """Delete a file's object (after an upload in flight landed) and drop its unsaved
        changes; its staged copy goes now unless still open."""
        async with node.lock:
            if node.record is not None:
                await self.threads.run(self.store.delete, node.record)
                self.namespace.records.forget(node.record.stored_key)
            self._discard(node)
        if node.open_handles == 0 and node.staging is not None:  # free its space now
            os.close(node.fd)
            self.staging.remove(node.staging)
            node.staging, node.fd = None, -1

    async def rename_file(self, src: Node, dst: Node | None, new_path: str) -> None:
        """Move a file to `new_path` (replacing `dst`): a server-side copy when it is saved,
        else its pending upload goes to the new name."""
        old_path = src.path
        # an upload of the replaced file in flight lands first (its object is then replaced)
        async with src.lock, dst.lock if dst is not None else contextlib.nullcontext():
            replaced = dst.record if dst is not None else None
            if src.record is not None and not src.dirty:
                new_key = self.namespace.key(new_path)
                # the same copy carries the new ctime (and coalesced attribute changes); a
                # foreign mode is never rewritten as dgfs's own (it would become trusted)
                now = time.time_ns()
                if src.attrs_dirty:
                    attrs = replace(self.effective_attrs(src), ctime_ns=now)
                else:
                    own = not src.record.attrs.foreign
                    attrs = replace(src.record.attrs, ctime_ns=now) if own else None
                known_new = replaced is None and self.namespace.listed_absent(new_path)
                src.record = await self.threads.run(
                    self.store.rename, src.record, new_key, replaced, attrs, known_new
                )
                src.attrs_dirty, src.pending = False, None
            else:
                # unsaved writes: the pending upload goes to the new name and must carry this
                # file's attributes, not those of the file it replaces
                src.pending = replace(self.effective_attrs(src), ctime_ns=time.time_ns())
                src.xattrs = self.user_xattrs(src)
                if src.record is not None:
                    await self.threads.run(self.store.delete, src.record)
                src.record = replaced
            if dst is not None:
                self._discard(dst)
                self.inodes.detach(dst)
            self.inodes.move(src, new_path)
            if src.dirty and src.staging is not None:
                self._mark_staged(src, new_path)
        self.namespace.note_file(old_path, None)
        if self.asynchronous and src.dirty:
            await self._make_durable(src)  # its recovery record names the new path
        if src.defer_until:
            src.defer_until = 0.0
            if self.asynchronous:
                self._submit(src)
            else:  # its error is rename()'s: close() did not report one
                await self._upload_closed(src)
        if src.record is not None and not src.dirty:
            self.namespace.note_file(new_path, src.record)

    # ------------------------------------------------------------ attributes

    async def set_attrs(self, node: Node, new: PosixAttrs, changed: bool) -> None:
        """setattr of a file: carried by its pending upload, or coalesced for a clean file
        (applied by one self-copy within ATTR_DELAY, or folded into a rename: rsync's
        chmod/utimes/chown then rename cost one copy, not four). An upload in flight lands
        first: the change is not lost when it marks the file clean."""
        async with node.lock:
            if node.dirty or node.record is None:
                node.pending = new
            elif changed:
                node.pending = new
                if not node.attrs_dirty:
                    node.attrs_dirty, node.attrs_since = True, time.monotonic()
        if not node.dirty or node.writers or node.defer_until:
            return
        if self.asynchronous:
            await self._make_durable(node)  # the sidecar carries the new attributes
            self._submit(node)
        else:
            await self.upload(node)

    async def set_user_xattrs(self, node: Node, values: dict[str, bytes]) -> None:
        """Replace a file's user xattrs (with its pending upload if it has one; one in
        flight lands first)."""
        async with node.lock:
            if node.dirty or node.record is None:
                node.xattrs = values  # carried by the pending upload
                return
            attrs = self.effective_attrs(node)
            record = await self.threads.run(self.store.set_attrs, node.record, attrs, values)
            node.record, node.attrs_dirty, node.pending = record, False, None
            self.namespace.records.remember(node.record)

    async def apply_attrs(self, node: Node) -> None:
        """Write coalesced attribute changes of a clean file (one self-copy)."""
        async with node.lock:
            if not node.attrs_dirty or node.dirty or node.record is None or node.path is None:
                return
            attrs = self.effective_attrs(node)
            try:
                node.record = await self.threads.run(self.store.set_attrs, node.record, attrs)
            except DgError as exc:
                log.warning("attributes of %s not stored: %s", node.record.stored_key, exc)
                raise UploadFailed(errno_for(exc), str(exc)) from None
            node.attrs_dirty, node.pending = False, None
            self.namespace.records.remember(node.record)

    # ------------------------------------------------------------ background tasks

    async def retry_failed_uploads(self) -> None:
        """Background task: retry dirty files nobody has open (after a failed close)."""
        while True:
            await trio.sleep(self.opts.retry_interval)
            for node in self.inodes.dirty_nodes():
                if node.writers == 0 and node.path is not None and not node.defer_until:
                    if self.asynchronous:
                        if not self.queue.busy(node):
                            self._submit(node)
                        continue
                    try:
                        await self._upload_closed(node)
                        log.info("upload of %s succeeded on retry", self.namespace.key(node.path))
                    except UploadFailed:
                        continue

    async def apply_pending_attrs(self) -> None:
        """Background task: write coalesced attribute changes after ATTR_DELAY, and temp
        files whose rename did not come within `temp_upload_delay`."""
        while True:
            await trio.sleep(ATTR_DELAY / 4)
            await self.apply_due(time.monotonic())

    async def apply_due(self, now: float) -> None:
        """One round of `apply_pending_attrs` at monotonic time `now`."""
        for node in self.inodes.dirty_nodes():
            if node.defer_until and node.defer_until <= now and node.writers == 0:
                node.defer_until = 0.0
                with contextlib.suppress(UploadFailed):  # retried by retry_failed_uploads
                    await self._upload_closed(node)
        due = now - ATTR_DELAY
        for node in self.inodes.attr_pending_nodes():
            if node.attrs_since > due:
                continue
            try:
                await self.apply_attrs(node)
            except UploadFailed:
                log.warning("attributes of %s not stored yet; retrying", node.path)

    async def recover_staged(self) -> None:
        """Background task at mount: store what dead daemons left staged (dgfs/staging.py);
        a read-only mount leaves it for a writable one."""
        base, endpoint = self.opts.cache_base, self.staging.endpoint
        if self.opts.read_only:
            left = await self.threads.run(orphaned_count, base)
            if left:
                log.warning(
                    "%d staged file(s) of a previous daemon left for a writable mount", left
                )
            self.recovery = {"state": "skipped (read-only mount)", "left": left}
            return
        self.recovery = {"state": "running"}
        bucket, upload = self.staging.bucket, self.store.put_if_unchanged
        try:
            report = await self.threads.run(recover, base, bucket, endpoint, upload)
        except Exception as exc:  # the staged files stay where they are, for the next mount
            log.exception("crash recovery failed")
            self.recovery = {"state": f"failed: {exc}"}
            return
        self.namespace.forget_listings()  # recovered files show at the next listing
        self.recovery = {"state": "done", "report": report}
