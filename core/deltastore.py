"""Logical files over the deltaglider layout: put/get/stat/list/delete/rename/attributes.

A logical key `dir/name` is stored either as `dir/name.delta` (xdelta3 against
`dir/reference.bin`), as `dir/name` with `dg-compression: none` (direct), or is a foreign
object `dir/name` without dg metadata (plain, served as is). All methods are synchronous and
thread-safe; the FUSE layer calls them from worker threads.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

from core import TOOL_NAME, codec, layout
from core.backoff import DeltaBackoff
from core.cache import NotCacheable
from core.config import DeltaSettings
from core.eligibility import may_delta
from core.errors import (
    CodecError,
    DgError,
    IntegrityError,
    NoSpace,
    NotFound,
    PreconditionFailed,
    Stale,
)
from core.hashing import CHUNK, sha256_file
from core.layout import Kind, ObjectRecord, PosixAttrs
from core.objectstore import ObjectInfo, ObjectStore, PutStamp
from core.policies import MAX_DECODES, Candidate, ReferencePolicy, make_policy, stream
from core.scratch import private_dir

log = logging.getLogger("dgfs.store")

HEAD_CONCURRENCY = 32
# ns stamp of the writer's clock on every object dgfs writes: decides between `x` and `x.delta`
# when their LastModified (1 s resolution) ties
META_WRITTEN = "dgfs-written"

DECOMPRESSED_REASON = "delta of externally decompressed content"
COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".lzma", ".z")
DIAGNOSE_EXPANSION = 100  # a decompressed-delta check stops past 100× the file's size


class TooManyObjects(DgError):
    """A prefix operation would touch more objects than allowed."""


@dataclass(frozen=True)
class Reference:
    """A deltaspace's `reference.bin` as its HEAD describes it."""

    key: str
    sha256: str
    size: int
    source_name: str


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


def _valid_segment(name: str) -> bool:
    return bool(name) and name not in (".", "..") and len(name.encode()) <= 255 and "\0" not in name


class DeltaStore:
    """put/get/stat/list/delete/rename of logical files in one bucket (deltaglider layout)."""

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
        self.policy = policy or make_policy(getattr(settings, "reference_policy", None))
        self.cache = cache
        self.tool = tool
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dgfs-work-")) if workdir is None else workdir
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._refs: dict[str, Reference] = {}
        self._refs_lock = threading.Lock()
        self.backoff = DeltaBackoff()
        self.hidden_heads = stream.HiddenHeads(self.head_record)  # stream walks

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
        return _tie_winner([r for r in found if r.last_modified_ns == latest])

    def list_dir(self, prefix: str, on_page=None) -> DirListing:
        """One directory level (prefix '' = root) from LIST pages only.

        `on_page(objects)`, if given, is called with each page's file objects as it arrives
        (so metadata HEADs can overlap the rest of the listing).

        Hidden: references, `.deltaglider/`, `.dgfs/`. Skipped (reported): names that cannot be
        file names, and a file whose name is also a directory (the directory wins). When both
        `x` and `x.delta` exist the newer wins and the other is listed in `stale`.
        """
        base = f"{prefix}/" if prefix else ""
        listing = DirListing()
        for page in self.store.list_pages(base):
            for p in page.prefixes:
                name = p[len(base) : -1]
                if name in layout.HIDDEN_SEGMENTS:
                    listing.private = listing.private or name == ".dgfs"
                    continue
                if _valid_segment(name):
                    listing.dirs.add(name)
                else:
                    listing.skipped.append(p)
            for obj in page.objects:
                self._classify_listed(listing, base, obj)
            if on_page is not None:
                on_page(
                    [
                        o
                        for o in page.objects
                        if not o.key.endswith("/") and not layout.is_hidden_key(o.key)
                    ]
                )
        for name, other in listing.ties.items():
            listing.files[name] = self._settle_tie(listing.files[name], other)
        for name in list(listing.files):
            if name in listing.dirs:
                listing.skipped.append(listing.files.pop(name).key)
        return listing

    def _classify_listed(self, listing: DirListing, base: str, obj: ObjectInfo) -> None:
        name = obj.key[len(base) :]
        if name == "":
            listing.markers[""] = obj  # the directory's own marker
            return
        if name == layout.REFERENCE_NAME:
            listing.reference = obj
            return
        logical = name[: -len(layout.DELTA_SUFFIX)] if name.endswith(layout.DELTA_SUFFIX) else name
        if not _valid_segment(logical):
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

    def _settle_tie(self, first: ObjectInfo, second: ObjectInfo) -> ObjectInfo:
        """Of `x` and `x.delta` listed with the same LastModified, the one to show (HEADs)."""
        found = {}
        for obj in (first, second):
            try:
                found[obj.key] = self.head_record(obj.key)
            except NotFound:
                continue
        if not found:
            return first
        winner = _tie_winner(list(found.values()))
        return first if winner.stored_key == first.key else second

    def records(self, objects: list[ObjectInfo]) -> list[ObjectRecord]:
        """HEAD many listed objects with bounded parallelism (records in the same order)."""
        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            return list(pool.map(lambda o: self.head_record(o.key), objects))

    def list(self, prefix: str) -> list[ObjectRecord]:
        """Logical files directly under `prefix` with their original sizes, sorted by name."""
        listing = self.list_dir(prefix)
        names = sorted(listing.files)
        return self.records([listing.files[n] for n in names])

    # ------------------------------------------------------------ references

    def reference(self, prefix: str) -> Reference | None:
        """The deltaspace's reference (remembered once seen), or None if it has none."""
        with self._refs_lock:
            known = self._refs.get(prefix)
        if known is not None:
            return known
        try:
            record = self.head_record(layout.reference_key(prefix))
        except NotFound:
            return None
        return self._remember_reference(prefix, record.stored_key, record)

    def known_reference(self, prefix: str) -> Reference | None:
        """The deltaspace's reference if this store has already seen it (no I/O)."""
        with self._refs_lock:
            return self._refs.get(prefix)

    def _remember_reference(self, prefix: str, key: str, record: ObjectRecord) -> Reference:
        if not record.sha256:
            raise IntegrityError(f"{key}: reference without dg-file-sha256")
        ref = Reference(
            key, record.sha256, record.stored_size, record.metadata.get("dg-source-name", "")
        )
        with self._refs_lock:
            self._refs[prefix] = ref
        return ref

    def _forget_reference(self, prefix: str) -> None:
        with self._refs_lock:
            self._refs.pop(prefix, None)

    def _fetch_verified(
        self, key: str, sha256: str, out: Path, chain: tuple[str, ...] = ()
    ) -> None:
        """Download `key` into `out` and check its SHA-256 (IntegrityError naming the key).

        A dgfs chain reference is decoded: a stream link (one decode, against the root and
        bodies of its stream: core/policies/stream.py) or a link of an older chain (against its
        parent hidden reference, materialised the same way). `chain`: the keys being decoded above
        this one; each counts as one sequential decode, bounded by MAX_DECODES (and cycles
        are refused).
        """
        with out.open("wb") as f:
            info, digest = self.store.download(key, f)
        if digest == sha256:
            return
        meta = layout.decode_metadata(info.metadata or {})
        parent = layout.chain_parent(meta)
        if parent is None:
            raise IntegrityError(f"{key}: sha256 mismatch (expected {sha256}, got {digest})")
        chain = (*chain, key)
        if len(chain) > MAX_DECODES or parent[0] in chain:
            raise IntegrityError(f"{key}: reference chain deeper than {MAX_DECODES} decodes")
        with self.scratch() as tmp:
            delta, base = tmp / "delta", tmp / "base"
            shutil.move(out, delta)
            if layout.is_stream_link(meta):
                if digest != meta.get(layout.META_BODY_SHA):
                    raise IntegrityError(f"{key}: stream link body sha256 mismatch")
                stream.write_source(self, self.hidden_heads, parent, base, tmp, sha256)
            else:
                self.reference_file(parent[0], parent[1], base, chain)
            try:
                codec.decode(base, delta, out)
            except Exception as exc:
                raise IntegrityError(f"{key}: cannot decode chain reference ({exc})") from None
        if sha256_file(out) != sha256:
            raise IntegrityError(f"{key}: decoded chain reference sha256 mismatch")

    def reference_file(
        self, ref_key: str, ref_sha256: str, out: Path, chain: tuple[str, ...] = ()
    ) -> None:
        """Materialise a verified reference into `out`, through the cache when there is one
        (a chain reference is cached decoded, by its sha256)."""
        self._through_cache(
            ref_sha256, out, lambda tmp: self._fetch_verified(ref_key, ref_sha256, tmp, chain)
        )

    def stored_file(self, key: str, sha256: str, out: Path, cached: bool = True) -> None:
        """The bytes stored under `key`, as they are (never decoded), checked against `sha256`,
        into `out`, through the cache unless `cached` is False (a stream link's body is part
        of later links' sources)."""

        def download(tmp: Path) -> None:
            with tmp.open("wb") as f:
                _, digest = self.store.download(key, f)
            if digest != sha256:
                raise IntegrityError(f"{key}: stored sha256 mismatch (expected {sha256})")

        if cached:
            self._through_cache(sha256, out, download)
        else:
            download(out)

    def _through_cache(self, sha256: str, out: Path, produce: Callable[[Path], None]) -> None:
        """`produce(path)` writes the bytes of `sha256`: into the cache entry, copied to `out`
        (or straight into `out` without a cache, or when the cache cannot hold them)."""
        if self.cache is None:
            produce(out)
            return
        try:
            entry = self.cache.get_or_create(sha256, produce)
        except NotCacheable:
            produce(out)
            return
        with entry:
            entry.copy_to(out)

    def create_reference(self, prefix: str, src: Path, sha256: str, name: str) -> bool:
        """Try to make `src` the deltaspace's reference (If-None-Match: *); True if we won."""
        key = layout.reference_key(prefix)
        meta = layout.fit_metadata(layout.reference_metadata(self.tool, name, sha256))
        try:
            self.store.put_file(key, src, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            log.info("reference %s: another writer created it first; encoding against theirs", key)
            self._forget_reference(prefix)
            return False
        with self._refs_lock:
            self._refs[prefix] = Reference(key, sha256, src.stat().st_size, name)
        return True

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
        if record is None:
            meta = layout.fit_metadata(
                {**layout.direct_metadata(self.tool, name, sha, size), **extra}
            )
            stamp = self.store.put_file(logical_key, src, layout.encode_metadata(meta))
            record = self.written(logical_key, Kind.DIRECT, size, size, sha, meta, stamp)
        if not known_new:
            self._remove_other_form(logical_key, record.kind, previous)
        return record

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
    ) -> ObjectRecord | None:
        """The delta-write path of every policy: `delta` (already decoded back and checked by
        codec.encode) is PUT as `logical_key`.delta against `ref`, then `ensure()` runs the
        writer half of the delete protocol. None when the delta is over `max_ratio` × `size`
        (the caller stores direct); a zero-diff self-delta always passes."""
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
        meta = layout.fit_metadata({**meta, **extra})
        key = layout.delta_key(logical_key)
        stamp = self.store.put_file(key, delta, layout.encode_metadata(meta))
        ensure()
        record = self.written(key, Kind.DELTA, delta_size, size, sha, meta, stamp)
        return replace(record, ref_key=ref.key, ref_sha256=ref.sha256)

    def ensure_reference(self, key: str, sha256: str, source_name: str, local: Path) -> None:
        """Writer half of the delete protocol: the reference must exist after our delta does.

        If a concurrent delete removed it between our encode and our PUT, put it back from
        `local`, the bytes we encoded against (conditional create, so two restorers agree).
        Without `local` it cannot: IntegrityError (the write fails and is retried).
        """
        try:
            self.store.head(key)
            return
        except NotFound:
            pass
        if not local.exists():
            self._forget_reference(layout.deltaspace_of(key))
            raise IntegrityError(
                f"{key}: reference vanished while writing and its bytes are not here to restore it"
            )
        log.warning("%s: reference vanished while writing; restoring it", key)
        meta = layout.fit_metadata(layout.reference_metadata(self.tool, source_name, sha256))
        try:
            self.store.put_file(key, local, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            pass
        self._forget_reference(layout.deltaspace_of(key))

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
        self.reconstruct(record, out)
        return record

    def reconstruct(
        self, record: ObjectRecord, out: Path, scratch_base: Path | None = None
    ) -> None:
        """Write the original bytes of `record` to `out`; IntegrityError names the bad key.

        Temporary files (reference, delta) go under `scratch_base` (default: the work dir).
        """
        check_record(record)
        if record.kind != Kind.DELTA:
            with out.open("wb") as f:
                _, digest = self.store.download(record.stored_key, f)
            if record.sha256 and digest != record.sha256:
                raise IntegrityError(f"{record.stored_key}: sha256 mismatch (object corrupted)")
            return
        if not record.ref_sha256 or not record.ref_key:
            raise IntegrityError(f"{record.stored_key}: delta without reference sha256")
        if record.ref_sha256 == record.sha256:
            # zero-diff: the file is the reference itself (and fetching it through the cache
            # here would wait on the very cache entry this call is producing)
            try:
                self._fetch_verified(record.ref_key, record.ref_sha256, out, (record.stored_key,))
            except NotFound:
                raise _missing_reference(record) from None
            return
        self._decode(record, scratch_base or self.workdir, out)

    def _decode(self, record: ObjectRecord, base: Path, out: Path) -> None:
        """Fetch a delta and its reference into a scratch dir under `base`, decode to `out`
        and check the SHA-256; a delta of externally decompressed content is named as such."""
        with private_dir(base) as tmp:
            ref_path, delta_path = self._fetch_delta(record, tmp)
            try:
                codec.decode(ref_path, delta_path, out, record.original_size)
                if sha256_file(out) == record.sha256:
                    return
                problem = "reconstructed sha256 mismatch"
            except NoSpace:
                raise
            except Exception as exc:
                problem = f"cannot decode ({exc})"
            if _decompressed_delta(ref_path, delta_path, record, tmp / "decompressed"):
                raise DecompressedDelta(record.stored_key, self.store.bucket)
            raise IntegrityError(f"{record.stored_key}: {problem}")

    def _fetch_delta(self, record: ObjectRecord, tmp: Path) -> tuple[Path, Path]:
        """A delta's verified reference and its body, downloaded into `tmp`."""
        ref_path, delta_path = tmp / "reference", tmp / "delta"
        try:
            self.reference_file(record.ref_key, record.ref_sha256, ref_path, (record.stored_key,))
        except NotFound:
            raise _missing_reference(record) from None
        with delta_path.open("wb") as f:
            self.store.download(record.stored_key, f)
        return ref_path, delta_path

    def get_decompressed(self, logical_key: str, out: Path) -> ObjectRecord:
        """Write the decompressed content of a delta of externally decompressed content (see
        DecompressedDelta) to `out`; CodecError if the delta is not one. Unverifiable: the
        recorded SHA-256 is of the compressed file, which cannot be rebuilt."""
        record = self.stat(logical_key)
        check_record(record)
        if record.kind != Kind.DELTA or not record.ref_key:
            raise CodecError(f"{record.stored_key}: not a delta; read it as usual")
        with private_dir(self.workdir) as tmp:
            ref_path, delta_path = self._fetch_delta(record, tmp)
            codec.decode_decompressed(ref_path, delta_path, out)
        return record

    def open_cached(self, record: ObjectRecord):
        """A pinned cache entry holding the original bytes of `record` (reconstructed once).

        Raises NotCacheable when the cache cannot hold it (memory backend): use `reconstruct`.
        """
        check_record(record)
        if record.kind == Kind.PLAIN or not record.sha256:
            return self.cache.get_or_create_plain(
                self.store.bucket,
                record.stored_key,
                record.etag,
                lambda tmp: self.reconstruct(record, tmp, tmp.parent),
            )
        return self.cache.get_or_create(
            record.sha256, lambda tmp: self.reconstruct(record, tmp, tmp.parent)
        )

    # ------------------------------------------------------------ delete

    def delete(self, record: ObjectRecord) -> None:
        """Delete a logical file; a delta's reference goes when no delta of its deltaspace is left.

        Delete protocol (safe against a writer in another process encoding against the
        reference right now): list the deltaspace (delimited, so sibling prefixes such as
        `releases2/` never count); if no `.delta` remains, keep the reference's bytes, delete it,
        and list again: if a delta appeared meanwhile, restore the reference (conditional
        create). A writer, after putting its delta, HEADs the reference and restores it from its
        own copy if it is gone. Whichever order the requests land in, a delta never outlives its
        reference.
        """
        self.store.delete(record.stored_key)
        if record.kind == Kind.DELTA:
            self.release_reference(layout.deltaspace_of(record.stored_key))

    def has_deltas(self, prefix: str) -> bool:
        """Whether the deltaspace holds a `.delta` (delimited: sibling prefixes don't count)."""
        base = f"{prefix}/" if prefix else ""
        return any(
            o.key.endswith(layout.DELTA_SUFFIX)
            for page in self.store.list_pages(base)
            for o in page.objects
        )

    def release_reference(self, prefix: str, local_copy: Path | None = None) -> None:
        """Delete the deltaspace's references that no delta uses any more (see `delete`)."""
        self.policy.release(self, prefix)  # keyframes first (no-op under deltaglider)
        self.remove_unused_reference(layout.reference_key(prefix), local_copy)

    def remove_unused_reference(self, ref_key: str, local_copy: Path | None = None) -> bool:
        """Delete `ref_key` unless a delta is, or appears, in its deltaspace; True if removed.

        The delete half of the protocol in `delete`: list, keep the bytes (`local_copy` if the
        caller has them), delete, list again, and restore (conditional create, original
        metadata) if a delta appeared meanwhile.
        """
        prefix = layout.deltaspace_of(ref_key)
        if self.has_deltas(prefix):
            return False
        self._forget_reference(prefix)
        with self.scratch() as tmp:
            kept = local_copy or tmp / "reference"
            try:
                if local_copy is None:
                    with kept.open("wb") as f:
                        info, _ = self.store.download(ref_key, f)
                else:
                    info = self.store.head(ref_key)
            except NotFound:
                return False
            self.store.delete(ref_key)
            if not self.has_deltas(prefix):
                return True
            log.warning("%s: a delta appeared while deleting; restoring reference", ref_key)
            try:
                self.store.put_file(ref_key, kept, info.metadata or {}, if_none_match=True)
            except PreconditionFailed:
                pass
        return False

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
                self.reconstruct(record, tmp / "file")
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
        with self._refs_lock:
            self._refs = {
                p: r for p, r in self._refs.items() if not (p + "/").startswith(old + "/")
            }
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
        if k not in (layout.META_MODE, layout.META_UID, layout.META_GID, layout.META_MTIME)
        and not k.startswith((layout.XATTR_META_PREFIX, layout.XATTR_HEX_PREFIX))
    }
    meta.update(layout.posix_attrs_to_meta(attrs))
    meta.update(layout.xattrs_to_meta(record.xattrs if xattrs is None else xattrs))
    return layout.fit_metadata(meta)


def _written_ns(record: ObjectRecord) -> int | None:
    return layout.parse_int(record.metadata.get(META_WRITTEN, ""), 0, layout.MAX_SIZE)


def _tie_winner(records: list[ObjectRecord]) -> ObjectRecord:
    """Of a file's forms with the same LastModified: the later `dgfs-written` stamp when
    every form has one, else the plain `x` (deltaglider reads it first)."""
    stamps = [_written_ns(r) for r in records]
    if None not in stamps and len(set(stamps)) == len(stamps):
        return records[stamps.index(max(stamps))]
    return next((r for r in records if r.kind != Kind.DELTA), records[0])


_HEX = frozenset("0123456789abcdef")


def _is_sha256(value: str | None) -> bool:
    return value is not None and len(value) == 64 and set(value) <= _HEX


def check_record(record: ObjectRecord) -> None:
    """Refuse metadata that cannot describe real content (IntegrityError naming the key)."""
    if record.sha256 is not None and not _is_sha256(record.sha256):
        raise IntegrityError(f"{record.stored_key}: dg-file-sha256 is not a SHA-256")
    if record.kind == Kind.DELTA:
        if record.original_size < 0:
            raise IntegrityError(f"{record.stored_key}: dg-file-size is missing or not a number")
        if not _is_sha256(record.ref_sha256):
            raise IntegrityError(f"{record.stored_key}: dg-ref-sha256 is not a SHA-256")
        if record.ref_key and not layout.ref_key_allowed(record.stored_key, record.ref_key):
            raise IntegrityError(
                f"{record.stored_key}: dg-ref-key {record.ref_key!r} is outside its deltaspace"
            )


class DecompressedDelta(IntegrityError):
    """A delta made by xdelta3 from externally decompressed inputs: the original compressed
    bytes cannot be rebuilt, only the decompressed content."""

    def __init__(self, stored_key: str, bucket: str) -> None:
        logical = stored_key.removesuffix(layout.DELTA_SUFFIX)
        super().__init__(
            f"{stored_key}: {DECOMPRESSED_REASON} (written by xdelta3 without -D, e.g. by "
            f"deltaglider 6.2 or an earlier dgfs); the original bytes cannot be rebuilt; "
            f"`dgfs get --decompressed s3://{bucket}/{logical} DEST` writes its "
            "decompressed content"
        )


def _decompressed_delta(ref: Path, delta: Path, record: ObjectRecord, out: Path) -> bool:
    """Whether `delta` was made from externally decompressed inputs: the file or its
    reference is compressed (by magic or name), and an xdelta3 run that decompresses inputs
    and never recompresses decodes it to content of another SHA-256."""
    name = record.logical_key.lower()
    compressed_name = name.endswith(COMPRESSED_SUFFIXES)
    if not compressed_name and codec.compression_of(ref) is None:
        return False
    try:
        bound = DIAGNOSE_EXPANSION * record.original_size + CHUNK
        codec.decode_decompressed(ref, delta, out, bound)
    except DgError:
        return False
    return sha256_file(out) != record.sha256


def _missing_reference(record: ObjectRecord) -> IntegrityError:
    return IntegrityError(f"{record.stored_key}: its reference {record.ref_key} is missing")
