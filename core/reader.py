"""The read path: verified downloads, references materialised through the cache, delta
decode with its checks. Every byte it returns matched a recorded SHA-256."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from core import archivedelta, codec, layout
from core.cache import NotCacheable
from core.errors import CodecError, DgError, IntegrityError, NoSpace, NotFound
from core.hashing import CHUNK, sha256_file
from core.layout import Kind, ObjectRecord
from core.objectstore import ObjectStore
from core.policies import MAX_DECODES, stream
from core.scratch import private_dir

DECOMPRESSED_REASON = "delta of externally decompressed content"
COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".lzma", ".z")
DIAGNOSE_EXPANSION = 100  # a decompressed-delta check stops past 100× the file's size
_HEX = frozenset("0123456789abcdef")


class Reader:
    """Reconstructs stored files into local files or cache entries (thread-safe)."""

    def __init__(
        self, objects: ObjectStore, cache, workdir: Path, hidden_heads: stream.HiddenHeads
    ) -> None:
        self.objects = objects
        self.cache = cache
        self.workdir = workdir
        self.hidden_heads = hidden_heads
        self.canonicals = archivedelta.Canonicals(self)  # archive deltas' reference forms

    def fetch_verified(self, key: str, sha256: str, out: Path, chain: tuple[str, ...] = ()) -> None:
        """Download `key` into `out` and check its SHA-256 (IntegrityError naming the key).

        A dgfs chain reference is decoded: a stream link (one decode, against the root and
        bodies of its stream: core/policies/stream.py) or a link of an older chain (against its
        parent hidden reference, materialised the same way). `chain`: the keys being decoded above
        this one; each counts as one sequential decode, bounded by MAX_DECODES (and cycles
        are refused).
        """
        with out.open("wb") as f:
            info, digest = self.objects.download(key, f)
        if digest == sha256:
            return
        meta = layout.decode_metadata(info.metadata or {})
        parent = layout.chain_parent(meta)
        if parent is None:
            raise IntegrityError(f"{key}: sha256 mismatch (expected {sha256}, got {digest})")
        chain = (*chain, key)
        if len(chain) > MAX_DECODES or parent[0] in chain:
            raise IntegrityError(f"{key}: reference chain deeper than {MAX_DECODES} decodes")
        with private_dir(self.workdir) as tmp:
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
        self.through_cache(
            ref_sha256, out, lambda tmp: self.fetch_verified(ref_key, ref_sha256, tmp, chain)
        )

    def stored_file(self, key: str, sha256: str, out: Path, cached: bool = True) -> None:
        """The bytes stored under `key`, as they are (never decoded), checked against `sha256`,
        into `out`, through the cache unless `cached` is False (a stream link's body is part
        of later links' sources)."""

        def download(tmp: Path) -> None:
            with tmp.open("wb") as f:
                _, digest = self.objects.download(key, f)
            if digest != sha256:
                raise IntegrityError(f"{key}: stored sha256 mismatch (expected {sha256})")

        if cached:
            self.through_cache(sha256, out, download)
        else:
            download(out)

    def through_cache(self, sha256: str, out: Path, produce: Callable[[Path], None]) -> None:
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

    def reconstruct(
        self, record: ObjectRecord, out: Path, scratch_base: Path | None = None
    ) -> None:
        """Write the original bytes of `record` to `out`; IntegrityError names the bad key.

        Temporary files (reference, delta) go under `scratch_base` (default: the work dir).
        """
        check_record(record)
        if record.kind != Kind.DELTA:
            with out.open("wb") as f:
                _, digest = self.objects.download(record.stored_key, f)
            if record.sha256 and digest != record.sha256:
                raise IntegrityError(f"{record.stored_key}: sha256 mismatch (object corrupted)")
            return
        if not record.ref_sha256 or not record.ref_key:
            raise IntegrityError(f"{record.stored_key}: delta without reference sha256")
        if record.ref_sha256 == record.sha256:
            # zero-diff: the file is the reference itself (and fetching it through the cache
            # here would wait on the very cache entry this call is producing)
            try:
                self.fetch_verified(record.ref_key, record.ref_sha256, out, (record.stored_key,))
            except NotFound:
                raise _missing_reference(record) from None
            return
        if archivedelta.is_archive_delta(record.metadata):
            archivedelta.reconstruct(self, record, scratch_base or self.workdir, out)
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
                raise DecompressedDelta(record.stored_key, self.objects.bucket)
            raise IntegrityError(f"{record.stored_key}: {problem}")

    def _fetch_delta(self, record: ObjectRecord, tmp: Path) -> tuple[Path, Path]:
        """A delta's verified reference and its body, downloaded into `tmp`."""
        ref_path, delta_path = tmp / "reference", tmp / "delta"
        try:
            self.reference_file(record.ref_key, record.ref_sha256, ref_path, (record.stored_key,))
        except NotFound:
            raise _missing_reference(record) from None
        with delta_path.open("wb") as f:
            self.objects.download(record.stored_key, f)
        return ref_path, delta_path

    def decompressed(self, record: ObjectRecord, out: Path) -> None:
        """Write the decompressed content of a delta of externally decompressed content (see
        DecompressedDelta) to `out`; CodecError if the delta is not one. Unverifiable: the
        recorded SHA-256 is of the compressed file, which cannot be rebuilt."""
        check_record(record)
        if record.kind != Kind.DELTA or not record.ref_key:
            raise CodecError(f"{record.stored_key}: not a delta; read it as usual")
        with private_dir(self.workdir) as tmp:
            ref_path, delta_path = self._fetch_delta(record, tmp)
            codec.decode_decompressed(ref_path, delta_path, out)

    def open_cached(self, record: ObjectRecord):
        """A pinned cache entry holding the original bytes of `record` (reconstructed once).

        Raises NotCacheable when the cache cannot hold it (memory backend): use `reconstruct`.
        """
        check_record(record)
        if record.kind == Kind.PLAIN or not record.sha256:
            return self.cache.get_or_create_plain(
                self.objects.bucket,
                record.stored_key,
                record.etag,
                lambda tmp: self.reconstruct(record, tmp, tmp.parent),
            )
        return self.cache.get_or_create(
            record.sha256, lambda tmp: self.reconstruct(record, tmp, tmp.parent)
        )


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
