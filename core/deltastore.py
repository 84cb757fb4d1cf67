"""Logical files over the deltaglider layout: put/get/stat/list/delete/rename/attributes.

A logical key `dir/name` is stored either as `dir/name.delta` (xdelta3 against
`dir/reference.bin`), as `dir/name` with `dg-compression: none` (direct), or is a foreign
object `dir/name` without dg metadata (plain, served as is). All methods are synchronous and
thread-safe; the FUSE layer calls them from worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

from core import TOOL_NAME, codec, dirindex, layout
from core.backoff import DeltaBackoff
from core.config import DeltaSettings
from core.eligibility import may_delta
from core.errors import (
    DgError,
    IntegrityError,
    NotFound,
    PreconditionFailed,
    Stale,
)
from core.hashing import sha256_file
from core.layout import Kind, ObjectRecord, PosixAttrs
from core.listing import META_WRITTEN, DirListing, list_level, newest_form
from core.objectstore import ObjectInfo, ObjectStore, PutStamp
from core.policies import Candidate, ReferencePolicy, make_policy, stream
from core.reader import Reader
from core.references import References
from core.scratch import private_dir
from core.similarity import SimilarityIndex

log = logging.getLogger("dgfs.store")

HEAD_CONCURRENCY = 32


class TooManyObjects(DgError):
    """A prefix operation would touch more objects than allowed."""


class DeltaStore:
    """put/get/stat/list/delete/rename of logical files in one bucket (deltaglider layout).

    Its parts: `references` (each deltaspace's reference.bin and the delete protocol,
    core/references.py), `reader` (the verified read path, core/reader.py), `policy` (what a
    new delta is encoded against, core/policies/), listing (core/listing.py).
    """

    def __init__(
        self,
        store: ObjectStore,
        settings: DeltaSettings,
        cache=None,
        workdir: Path | None = None,
        tool: str = TOOL_NAME,
        policy: ReferencePolicy | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        codec.set_max_source_window(
            getattr(settings, "max_source_window", codec.DEFAULT_MAX_SOURCE_WINDOW)
        )
        self.policy = policy or make_policy(getattr(settings, "reference_policy", None))
        self.cache = cache
        self.tool = tool
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dgfs-work-")) if workdir is None else workdir
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.backoff = DeltaBackoff()
        # for metrics: xdelta3 attempts, files stored as deltas, original - delta bytes
        self.delta_attempts = 0
        self.delta_stored = 0
        self.delta_saved_bytes = 0
        self._counts_lock = threading.Lock()
        self.similarity = SimilarityIndex()  # hopeless encodes not started
        self.hidden_heads = stream.HiddenHeads(self.head_record)  # stream walks
        self.references = References(store, self.head_record, tool, self.scratch)
        self.reader = Reader(store, cache, self.workdir, self.hidden_heads)

    def close(self) -> None:
        """Remove the private work directory if this store created it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def scratch(self) -> AbstractContextManager[Path]:
        """A private temp directory for one operation, removed afterwards."""
        return private_dir(self.workdir)

    # ------------------------------------------------------------ stat / list

    def head_record(self, stored_key: str) -> ObjectRecord:
        """HEAD one stored key and classify it (NotFound if missing)."""
        info = self.store.head(stored_key)
        return layout.record_from_head(
            stored_key, info.size, info.etag, info.last_modified_ns, info.metadata or {}
        )

    def stat(self, logical_key: str) -> ObjectRecord:
        """The record of a logical file: `name` or `name.delta`, the newer when both exist."""
        found = []
        for key in (logical_key, layout.delta_key(logical_key)):
            try:
                found.append(self.head_record(key))
            except NotFound:
                continue
        if not found:
            raise NotFound(f"{logical_key}: no such file")
        latest = max(r.last_modified_ns for r in found)
        return newest_form([r for r in found if r.last_modified_ns == latest])

    def list_dir(
        self, prefix: str, on_page: Callable[[list[ObjectInfo]], None] | None = None
    ) -> DirListing:
        """One directory level from LIST pages (core/listing.py: `list_level`)."""
        return list_level(self.store, self.head_record, prefix, on_page)

    def records(self, objects: list[ObjectInfo]) -> list[ObjectRecord]:
        """HEAD many listed objects with bounded parallelism (records in the same order)."""
        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            return list(pool.map(lambda o: self.head_record(o.key), objects))

    def list(self, prefix: str) -> list[ObjectRecord]:
        """Logical files directly under `prefix` with their original sizes, sorted by name."""
        listing = self.list_dir(prefix)
        names = sorted(listing.files)
        return self.records([listing.files[n] for n in names])

    # ------------------------------------------------------------ put

    def put(
        self,
        src: Path,
        logical_key: str,
        attrs: PosixAttrs | None = None,
        xattrs: dict[str, bytes] | None = None,
        previous: ObjectRecord | None = None,
        force_direct: bool = False,
        known_new: bool = False,
    ) -> ObjectRecord:
        """Store a local file as `logical_key`: delta when it pays, direct otherwise.

        Rule for the reference: the first delta-eligible file written to a deltaspace becomes
        its `reference.bin` (created with If-None-Match: *, so concurrent first writers agree
        on one) and is stored as a zero-diff self-delta, as deltaglider does. Later files are
        encoded against it; a delta larger than `max_ratio` × original is stored direct.
        The new object is written before the other form (`x` vs `x.delta`) is deleted.
        `previous`: the record being replaced if the caller knows it (saves HEADs);
        `known_new`: the caller knows nothing exists under this name (saves the HEAD too).
        """
        layout.check_logical_name(logical_key)
        extra = layout.posix_attrs_to_meta(attrs or PosixAttrs())
        extra.update(layout.xattrs_to_meta(xattrs or {}))
        extra[META_WRITTEN] = str(time.time_ns())
        size = src.stat().st_size
        sha = sha256_file(src)
        prefix = layout.deltaspace_of(logical_key)
        name = logical_key.rsplit("/", 1)[-1]
        record = None
        if (
            not force_direct
            and may_delta(self.settings, logical_key, size)
            and self.backoff.should_try(prefix, name)
        ):
            record = self._put_delta_checked(src, logical_key, prefix, name, size, sha, extra)
            self.backoff.record(prefix, name, paid=record is not None)
            self._count_delta(size, record)
        if record is None:
            meta = layout.fit_metadata(
                {**layout.direct_metadata(self.tool, name, sha, size), **extra}
            )
            stamp = self.store.put_file(logical_key, src, layout.encode_metadata(meta))
            record = self.written(logical_key, Kind.DIRECT, size, size, sha, meta, stamp)
        if not known_new:
            self._remove_other_form(logical_key, record.kind, previous)
        return record

    def _count_delta(self, size: int, record: ObjectRecord | None) -> None:
        """One xdelta3 attempt and, if it paid, the bytes it saved (uploads run in threads)."""
        with self._counts_lock:
            self.delta_attempts += 1
            if record is not None and record.kind is Kind.DELTA:
                self.delta_stored += 1
                self.delta_saved_bytes += max(0, size - record.stored_size)

    def put_if_unchanged(
        self, src: Path, logical_key: str, attrs: PosixAttrs, base: tuple[str, str] | None
    ) -> ObjectRecord:
        """Store `src` direct as `logical_key` only while the file is still the object `base`
        (stored key, ETag), or absent for None: the last check is the PUT's own precondition
        (If-Match, or If-None-Match: *). PreconditionFailed otherwise (crash recovery)."""
        layout.check_logical_name(logical_key)
        try:
            current = self.stat(logical_key)
        except NotFound:
            current = None
        if base != (None if current is None else (current.stored_key, current.etag)):
            raise PreconditionFailed(f"{logical_key}: changed since {base} was read")
        extra = {**layout.posix_attrs_to_meta(attrs), META_WRITTEN: str(time.time_ns())}
        size, sha, name = src.stat().st_size, sha256_file(src), logical_key.rsplit("/", 1)[-1]
        meta = layout.fit_metadata({**layout.direct_metadata(self.tool, name, sha, size), **extra})
        etag = base[1] if base is not None and base[0] == logical_key else None
        stamp = self.store.put_file(
            logical_key, src, layout.encode_metadata(meta), etag is None, etag
        )
        self._remove_other_form(logical_key, Kind.DIRECT, current)
        return self.written(logical_key, Kind.DIRECT, size, size, sha, meta, stamp)

    def _put_delta_checked(
        self,
        src: Path,
        logical_key: str,
        prefix: str,
        name: str,
        size: int,
        sha: str,
        extra: dict[str, str],
    ) -> ObjectRecord | None:
        """The policy's delta, or None (store direct) when the delta did not decode back to
        `src`: references made for it and left unused are released."""
        try:
            return self.policy.put_delta(self, src, logical_key, prefix, name, size, sha, extra)
        except codec.RoundTripMismatch as exc:
            log.warning("%s: %s; storing direct", logical_key, exc)
            self.release_reference(prefix)
            return None

    def write_delta(
        self,
        logical_key: str,
        delta: Path,
        ref: Candidate,
        sha: str,
        size: int,
        extra: dict[str, str],
        ensure: Callable[[], None],
        policy: str | None = None,
        transform: dict[str, str] | None = None,
    ) -> ObjectRecord | None:
        """The delta-write path of every policy: `delta` (already decoded back and checked by
        codec.encode) is PUT as `logical_key`.delta against `ref`, then `ensure()` runs the
        writer half of the delete protocol. None when the delta is over `max_ratio` × `size`
        (the caller stores direct); a zero-diff self-delta always passes. `transform`: the
        metadata of an archive delta (core/archivedelta.py, via policies' `encode_delta`)."""
        zero_diff = ref.sha256 == sha
        delta_size = delta.stat().st_size
        if size and delta_size > self.settings.max_ratio * size and not zero_diff:
            log.info("%s: delta %d / %d bytes exceeds max ratio; storing direct",
                     logical_key, delta_size, size)  # fmt: skip
            return None
        name = logical_key.rsplit("/", 1)[-1]
        meta = layout.delta_metadata(
            self.tool, name, sha, size, ref.key, ref.sha256, delta_size, zero_diff
        )
        if policy:
            meta[layout.META_POLICY] = policy
        meta = layout.fit_metadata({**meta, **(transform or {}), **extra})
        key = layout.delta_key(logical_key)
        stamp = self.store.put_file(key, delta, layout.encode_metadata(meta))
        ensure()
        record = self.written(key, Kind.DELTA, delta_size, size, sha, meta, stamp)
        return replace(record, ref_key=ref.key, ref_sha256=ref.sha256)

    def written(
        self,
        key: str,
        kind: Kind,
        stored: int,
        size: int,
        sha: str,
        meta: dict[str, str],
        stamp: PutStamp | None = None,
    ) -> ObjectRecord:
        """The record of an object just written. With the PUT's `stamp` it carries the real
        ETag and, as LastModified, the response date (the metadata cache takes the exact
        LastModified from the next LIST); without one the ETag is unknown ("")."""
        logical = key[: -len(layout.DELTA_SUFFIX)] if kind == Kind.DELTA else key
        return ObjectRecord(
            logical_key=logical,
            stored_key=key,
            kind=kind,
            stored_size=stored,
            original_size=size,
            etag=stamp.etag if stamp else "",
            last_modified_ns=stamp.date_ns if stamp else 0,
            sha256=sha,
            tool=self.tool,
            attrs=layout.posix_attrs_from(meta),
            xattrs=layout.xattrs_from(meta),
            metadata=meta,
        )

    def _remove_other_form(
        self, logical_key: str, kind: Kind, previous: ObjectRecord | None
    ) -> None:
        other_key = logical_key if kind == Kind.DELTA else layout.delta_key(logical_key)
        if previous is not None and previous.stored_key != other_key:
            return
        if previous is None:
            try:
                self.store.head(other_key)
            except NotFound:
                return
        self.store.delete(other_key)
        if other_key.endswith(layout.DELTA_SUFFIX):
            self.release_reference(layout.deltaspace_of(logical_key))

    # ------------------------------------------------------------ get

    def get(self, logical_key: str, out: Path, record: ObjectRecord | None = None) -> ObjectRecord:
        """Reconstruct a logical file into `out` straight from S3 (no cache), SHA-256 checked."""
        record = record or self.stat(logical_key)
        self.reader.reconstruct(record, out)
        return record

    def get_decompressed(self, logical_key: str, out: Path) -> ObjectRecord:
        """The decompressed content of a delta of externally decompressed content into `out`
        (core/reader.py: `Reader.decompressed`)."""
        record = self.stat(logical_key)
        self.reader.decompressed(record, out)
        return record

    # ------------------------------------------------------------ delete

    def delete(self, record: ObjectRecord) -> None:
        """Delete a logical file; a delta's reference goes when no delta of its deltaspace is
        left, by the delete protocol (core/references.py)."""
        self.store.delete(record.stored_key)
        if record.kind == Kind.DELTA:
            self.release_reference(layout.deltaspace_of(record.stored_key))

    def release_reference(self, prefix: str, local_copy: Path | None = None) -> None:
        """Delete the deltaspace's references that no delta uses any more (delete protocol)."""
        self.policy.release(self, prefix)  # keyframes first (no-op under deltaglider)
        self.references.remove_unused(layout.reference_key(prefix), local_copy)

    # ------------------------------------------------------------ rename / attributes

    def rename(
        self,
        record: ObjectRecord,
        dst_logical: str,
        replaced: ObjectRecord | None = None,
        attrs: PosixAttrs | None = None,
        known_new: bool = False,
    ) -> ObjectRecord:
        """Move a logical file. Same deltaspace (or no delta): server-side copy + delete.
        Across deltaspaces a delta is re-encoded against the destination's reference.
        `attrs`, if given, replace the POSIX attributes in the same copy (no extra request);
        `known_new`: nothing exists under the destination name (no HEAD for its other form)."""
        layout.check_logical_name(dst_logical)
        same_space = layout.deltaspace_of(record.logical_key) == layout.deltaspace_of(dst_logical)
        if record.kind == Kind.DELTA and not same_space:
            with self.scratch() as tmp:
                self.reader.reconstruct(record, tmp / "file")
                new = self.put(
                    tmp / "file", dst_logical, attrs or record.attrs, record.xattrs, replaced
                )
        else:
            new = self._copy_current(record, lambda r: self._copy_to(r, dst_logical, attrs))
            if not known_new:
                self._remove_other_form(dst_logical, record.kind, replaced)
        if record.stored_key != new.stored_key:
            if record.kind == Kind.DELTA and not same_space:
                self.delete(record)
            else:
                self.store.delete(record.stored_key)
        return new

    def _copy_to(
        self, record: ObjectRecord, dst_logical: str, attrs: PosixAttrs | None
    ) -> ObjectRecord:
        """Server-side copy of `record` (if unchanged) to `dst_logical`, same form."""
        dst_key = layout.delta_key(dst_logical) if record.kind == Kind.DELTA else dst_logical
        meta = _metadata_with(record, attrs) if attrs is not None else dict(record.metadata)
        if "dg-original-name" in meta:
            meta["dg-original-name"] = dst_logical.rsplit("/", 1)[-1]
        meta[META_WRITTEN] = str(time.time_ns())
        meta = layout.fit_metadata(meta)
        self.store.copy(
            record.stored_key, dst_key, layout.encode_metadata(meta), if_match=record.etag
        )
        return replace(
            record,
            logical_key=dst_logical,
            stored_key=dst_key,
            metadata=meta,
            attrs=layout.posix_attrs_from(meta),
        )

    def _copy_current(
        self, record: ObjectRecord, copy: Callable[[ObjectRecord], ObjectRecord]
    ) -> ObjectRecord:
        """`copy(record)`: a server-side copy conditional on the record's ETag, so that one
        object's metadata is never stamped onto another's body. If the object was replaced
        since it was read, once more with a fresh HEAD; Stale if it changes again."""
        if not record.etag:  # written by a multipart upload: its ETag is not known
            record = self.head_record(record.stored_key)
        try:
            return copy(record)
        except PreconditionFailed:
            log.info(
                "%s: replaced since it was read; copying the current object", record.stored_key
            )
        try:
            return copy(self.head_record(record.stored_key))
        except PreconditionFailed:
            raise Stale(f"{record.stored_key}: replaced again during a copy") from None

    def set_attrs(
        self, record: ObjectRecord, attrs: PosixAttrs, xattrs: dict[str, bytes] | None = None
    ) -> ObjectRecord:
        """Replace POSIX attributes (and user xattrs) with a self-copy; no data re-upload.
        Applied to the object as it is now if another client replaced it meanwhile."""

        def copy(current: ObjectRecord) -> ObjectRecord:
            meta = _metadata_with(current, attrs, xattrs)
            key = current.stored_key
            self.store.copy(key, key, layout.encode_metadata(meta), if_match=current.etag)
            return replace(
                current,
                attrs=layout.posix_attrs_from(meta),
                xattrs=layout.xattrs_from(meta),
                metadata=meta,
            )

        return self._copy_current(record, copy)

    # ------------------------------------------------------------ directories

    def make_dir(self, logical_dir: str, attrs: PosixAttrs | None = None) -> None:
        """Write the `dir/` marker object (as s3fs and the AWS console do)."""
        meta = layout.posix_attrs_to_meta(attrs or PosixAttrs())
        self.store.put_bytes(logical_dir.rstrip("/") + "/", b"", layout.encode_metadata(meta))

    def remove_dir_marker(self, logical_dir: str) -> None:
        self.store.delete(logical_dir.rstrip("/") + "/")

    def marker_attrs(self, logical_dir: str) -> PosixAttrs:
        """The attributes stored on a directory's `dir/` marker (defaults when it has none)."""
        key = logical_dir.rstrip("/") + "/"
        try:
            info = self.store.head(key)
        except NotFound:
            return PosixAttrs()
        return layout.posix_attrs_from(layout.decode_metadata(info.metadata or {}), key)

    def remove_dir_index(self, logical_dir: str) -> None:
        """Delete a directory's index object (it would keep an emptied directory listed)."""
        self.store.delete(dirindex.index_key(logical_dir))

    def read_link_body(self, record: ObjectRecord, limit: int) -> bytes:
        """A symlink's stored target (one ranged GET), checked against its size limit and
        its sha256 (IntegrityError)."""
        data = self.store.get_bytes(record.stored_key, 0, limit)
        if len(data) > limit:  # replaced by a large object since its HEAD
            raise IntegrityError(f"{record.stored_key}: symlink body larger than {limit} bytes")
        if record.sha256 and hashlib.sha256(data).hexdigest() != record.sha256:
            raise IntegrityError(f"{record.stored_key}: symlink target fails its sha256")
        return data

    @property
    def requests(self) -> dict[str, int]:
        """S3 requests made so far, by operation."""
        return dict(self.store.requests)

    @property
    def identity(self) -> str:
        """`endpoint|bucket`: names this store's bucket across processes (cache file names)."""
        return f"{self.store.settings.endpoint_url or 'aws'}|{self.store.bucket}"

    def cleanup_stale(self, stale_keys: list[str]) -> None:
        """Delete the older form of files that exist as both `x` and `x.delta`."""
        for key in stale_keys:
            log.info("%s: removing stale form left by an interrupted overwrite", key)
            self.store.delete(key)

    def rename_prefix(self, old: str, new: str, limit: int) -> int:
        """Move every object under `old/` to `new/` (copy then delete; not atomic).

        Delta (and chain reference) metadata that points at a reference under `old/` is
        rewritten to the moved reference. More than `limit` objects → TooManyObjects (the
        caller falls back, e.g. EXDEV so that `mv` copies). References are copied first and
        deleted last, so every delta stays readable at every moment. Returns the number of
        objects moved.
        """
        objects = [o for page in self.store.list_pages(old + "/", None) for o in page.objects]
        if len(objects) > limit:
            raise TooManyObjects(f"{old}: {len(objects)} objects (rename limit {limit})")
        objects.sort(key=lambda o: not o.key.endswith("/" + layout.REFERENCE_NAME))
        for obj in objects:
            self._copy_moved(obj.key, old, new)
        for obj in reversed(objects):
            self.store.delete(obj.key)
        self.references.forget_below(old)
        return len(objects)

    def _copy_moved(self, key: str, old: str, new: str) -> None:
        """Copy one object of a directory rename `old` → `new`, its reference fields rewritten,
        conditional on the ETag its metadata came from (once more if it was replaced meanwhile).
        """
        for _ in range(2):
            info = self.store.head(key)
            meta = layout.decode_metadata(info.metadata or {})
            for field_name in ("dg-ref-key", layout.META_CHAIN_PARENT):
                ref_key = meta.get(field_name, "")
                if ref_key.startswith(old + "/"):
                    meta[field_name] = new + ref_key[len(old) :]
            encoded = layout.encode_metadata(layout.fit_metadata(meta))
            try:
                self.store.copy(key, new + key[len(old) :], encoded, if_match=info.etag)
                return
            except PreconditionFailed:
                log.info("%s: replaced during a directory rename; copying it again", key)
        raise Stale(f"{key}: replaced again during a directory rename")


def _metadata_with(
    record: ObjectRecord, attrs: PosixAttrs, xattrs: dict[str, bytes] | None = None
) -> dict[str, str]:
    """The record's metadata with POSIX attributes (and user xattrs, if given) replaced."""
    meta = {
        k: v
        for k, v in record.metadata.items()
        if k not in layout.POSIX_KEYS
        and not k.startswith((layout.XATTR_META_PREFIX, layout.XATTR_HEX_PREFIX))
    }
    meta.update(layout.posix_attrs_to_meta(attrs))
    meta.update(layout.xattrs_to_meta(record.xattrs if xattrs is None else xattrs))
    return layout.fit_metadata(meta)


_HEX = frozenset("0123456789abcdef")
