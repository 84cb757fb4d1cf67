"""Archive deltas (issue #14, dgfs-only): an xdelta3 delta between the canonical forms
(core/archive) of a file and of its reference, stored when it is smaller than the byte delta.

Write (`encode`, called by the policies through core/policies/base.py `encode_delta`): the
reference's canonical form is made once per reference (memo by its sha256, and kept in the
read cache under the canonical form's own sha256); the file's canonical form is encoded
against it by codec.encode (decoded back and checked against the canonical sha256), then
rebuilt (hashing only) and required to give the file's sha256 — before anything is PUT.
Read (`reconstruct`): canonical(reference) through the cache, the delta decoded (bounded by
`dgfs-canonical-size`), `dgfs-canonical-sha256` checked, rebuilt, `dg-file-sha256` checked.
Canonicalizing the file and both rebuilds take streams unchanged since the reference from
the reference's memo (core/archive/memo.py: no search, no re-deflate); a rebuild that fails
with the memo is run again without it. The reference itself stays the raw file
(deltaglider layout).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from core import codec, layout
from core.archive import DEFAULT_LIMITS, Memo, canonicalize, rebuild, rebuilt_sha256, zpin
from core.cache import NotCacheable
from core.errors import ArchiveError, DgError, IntegrityError, NoSpace, NotFound
from core.hashing import sha256_file
from core.scratch import private_dir

log = logging.getLogger("dgfs.archive")

TRANSFORM_VERSION = "1"
TRY_ABOVE = 0.2  # an archive delta is tried when the byte delta is over 20 % of the file
MEMO_SIZE = 512  # references whose canonical form (or "not an archive") is remembered
STREAM_MEMOS = 4  # references whose stream memo (core/archive/memo.py) is kept
_UNKNOWN = object()

# seconds spent per phase of archive deltas, for scripts/bench (process-wide, approximate)
PHASE_SECONDS: dict[str, float] = {}
_phase_lock = threading.Lock()


def _charge(phase: str, since: float) -> float:
    now = time.perf_counter()
    with _phase_lock:
        PHASE_SECONDS[phase] = PHASE_SECONDS.get(phase, 0.0) + now - since
    return now


@dataclass(frozen=True)
class Form:
    """A reference's canonical form: its transform, sha256 and size."""

    transform: str
    sha256: str
    size: int


def _family(transform: str) -> str:
    """The outer container: a zip only diffs against a zip, a gzip against a gzip."""
    return transform.split("+", 1)[0]


class Canonicals:
    """Canonical forms of references, remembered by the reference's sha256 and materialised
    through the read cache (keyed by the canonical form's sha256, which the cache verifies)."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self._memo: OrderedDict[str, Form | None] = OrderedDict()
        self._streams: OrderedDict[str, Memo] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, ref_sha: str):
        with self._lock:
            if ref_sha not in self._memo:
                return _UNKNOWN
            self._memo.move_to_end(ref_sha)
            return self._memo[ref_sha]

    def lacks_form(self, ref_sha: str) -> bool:
        """Whether the reference is known to have no canonical form (not an archive, or
        nothing in it re-deflates): no archive delta can be made against it."""
        return self._get(ref_sha) is None

    def remember(self, ref_sha: str, form: Form | None) -> None:
        with self._lock:
            self._memo[ref_sha] = form
            self._memo.move_to_end(ref_sha)
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)

    def of_local(self, ref_path: Path, ref_sha: str, out: Path) -> Form | None:
        """The canonical form of the raw reference at `ref_path` (sha256 `ref_sha`) into
        `out`; None when it has none (not an archive, nothing reproducible, over a limit)."""
        form = self._get(ref_sha)
        if form is None:
            return None
        if isinstance(form, Form):
            self.materialise(form.sha256, out, lambda: ref_path)
            return form
        started = time.perf_counter()
        made = canonicalize(ref_path, out)
        _charge("canonicalize reference", started)
        form = None if made is None else Form(made.transform, made.sha256, made.size)
        self.remember(ref_sha, form)
        if form is not None and self.reader.cache is not None:  # the next write reuses it
            try:
                self.reader.cache.get_or_create(
                    form.sha256, lambda tmp: shutil.copyfile(out, tmp)
                ).close()
            except NotCacheable:
                pass
        return form

    def streams(self, canonical_sha: str, raw: Path, canonical: Path) -> Memo:
        """The stream memo of the reference whose canonical form (sha256 `canonical_sha`) is
        at `canonical`, its raw bytes at `raw` (both verified): built once, kept for the next
        files of the same reference."""
        with self._lock:
            memo = self._streams.get(canonical_sha)
            if memo is not None:
                self._streams.move_to_end(canonical_sha)
                return memo.over(raw, canonical)
        memo = Memo(raw, canonical)
        with self._lock:
            self._streams[canonical_sha] = memo
            while len(self._streams) > STREAM_MEMOS:
                self._streams.popitem(last=False)
        return memo

    def materialise(self, canonical_sha: str, out: Path, raw) -> None:
        """canonical(reference) with sha256 `canonical_sha` into `out`, through the cache;
        on a miss `raw()` gives the verified raw reference, canonicalized and checked."""

        def produce(tmp: Path) -> None:
            source = raw()
            started = time.perf_counter()
            made = canonicalize(source, tmp)
            _charge("canonicalize reference", started)
            if made is None or made.sha256 != canonical_sha:
                tmp.unlink(missing_ok=True)
                raise IntegrityError(
                    f"reference canonical form differs from the recorded {canonical_sha[:16]}…"
                )

        self.reader.through_cache(canonical_sha, out, produce)


# ---------------------------------------------------------------- write


def encode(store, ref_path: Path, ref_sha: str, src: Path, sha: str, delta: Path,
           limit: int | None, name: str = "") -> dict[str, str] | None:  # fmt: skip
    """The delta of `src` (sha256 `sha`) against the raw reference `ref_path` into `delta`.

    The byte delta first (bounded by `limit`). When `archive_deltas` is on and that delta is
    over TRY_ABOVE × the file or abandoned, an archive delta is tried, bounded by the byte
    delta: it needs both files to canonicalize in one container family, and replaces the byte
    delta only when smaller. Returns the archive delta's metadata (core/layout
    META_TRANSFORM …), or {} for a byte delta; None when no delta fits in `limit` bytes
    (store direct). Either delta was decoded back and checked before this returns.
    """
    if not getattr(store.settings, "archive_deltas", False) or ref_sha == sha:
        return None if codec.encode(ref_path, src, delta, sha, limit) is None else {}
    started = time.perf_counter()
    try:
        byte = codec.encode(ref_path, src, delta, sha, limit)
    except codec.RoundTripMismatch as exc:
        log.warning("%s: byte delta does not decode back (%s)", name, exc)
        byte = None
    _charge("byte delta", started)
    if byte is not None and byte <= TRY_ABOVE * src.stat().st_size:
        return {}  # small already: not worth an archive's CPU (canonicalize, rebuild)
    bound = limit if byte is None else byte - 1
    archive = _archive(store, ref_path, ref_sha, src, sha, delta, bound, name)
    if archive is None:
        return None if byte is None else {}
    adelta, meta = archive
    os.replace(adelta, delta)
    return meta


def _archive(store, ref_path: Path, ref_sha: str, src: Path, sha: str, delta: Path,
             limit: int | None, name: str) -> tuple[Path, dict[str, str]] | None:  # fmt: skip
    """The archive delta of `src` next to `delta` (proven: decoded back to the canonical
    sha256 and rebuilt to `sha`) and its metadata; None when there is none or it fails."""
    out = delta.with_name(delta.name + ".archive")
    with private_dir(store.workdir) as tmp:
        ref_canon, canon_path = tmp / "reference.canonical", tmp / "file.canonical"
        try:
            ref_form = store.reader.canonicals.of_local(ref_path, ref_sha, ref_canon)
            if ref_form is None:
                return None
            started = time.perf_counter()
            memo = store.reader.canonicals.streams(ref_form.sha256, ref_path, ref_canon)
            started = _charge("reference memo", started)
            canon = canonicalize(src, canon_path, memo=memo)
            started = _charge("canonicalize file", started)
            if canon is None or _family(canon.transform) != _family(ref_form.transform):
                return None
            if codec.encode(ref_canon, canon_path, out, canon.sha256, limit) is None:
                log.info("%s: archive delta exceeds the bound", name)
                return None
            started = _charge("encode + round trip", started)
            rebuilt = _with_memo(lambda m: rebuilt_sha256(canon_path, memo=m), memo, name)
            _charge("rebuild check", started)
            if rebuilt != sha:
                raise ArchiveError("canonical form rebuilds to another file")
        except NoSpace:
            out.unlink(missing_ok=True)
            raise
        except OSError as exc:
            out.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise NoSpace(str(exc)) from None
            raise
        except (DgError, ValueError) as exc:
            out.unlink(missing_ok=True)
            log.warning("%s: no archive delta (%s); byte delta", name, exc)
            return None
    meta = {
        layout.META_TRANSFORM: canon.transform,
        layout.META_TRANSFORM_VERSION: TRANSFORM_VERSION,
        layout.META_DEFLATE: zpin.IMPLEMENTATION,
        layout.META_CANONICAL_SHA: canon.sha256,
        layout.META_CANONICAL_SIZE: str(canon.size),
        layout.META_REF_CANONICAL_SHA: ref_form.sha256,
        layout.META_INFLATED: str(canon.inflated),
        layout.META_KEPT: str(canon.kept),
        "dg-delta-cmd": "dgfs archive delta: xdelta3 of canonical forms (core/archive)",
    }
    return out, meta


def _with_memo(run, memo: Memo | None, name: str):
    """`run(memo)`; if that fails with an ArchiveError (a memo that does not describe its
    reference), `run(None)`: every stream re-deflated."""
    try:
        return run(memo)
    except ArchiveError as exc:
        if not memo:
            raise
        log.warning("%s: rebuild with the reference's streams failed (%s); re-deflating", name, exc)
        return run(None)


# ---------------------------------------------------------------- read


def is_archive_delta(meta: dict[str, str]) -> bool:
    return bool(meta.get(layout.META_TRANSFORM))


def _checked_fields(key: str, meta: dict[str, str]) -> tuple[str, int, str]:
    """(canonical sha256, canonical size, reference canonical sha256), or IntegrityError
    with one line naming what this reader lacks or what is malformed."""
    version = meta.get(layout.META_TRANSFORM_VERSION, "")
    if version != TRANSFORM_VERSION:
        raise IntegrityError(
            f"{key}: archive delta version {version!r} is not readable by this dgfs "
            f"(it reads version {TRANSFORM_VERSION}; a newer dgfs wrote it)"
        )
    implementation = meta.get(layout.META_DEFLATE, "")
    if implementation != zpin.IMPLEMENTATION:
        raise IntegrityError(
            f"{key}: archive delta needs deflate implementation {implementation!r}; "
            f"this dgfs rebuilds with {zpin.IMPLEMENTATION} only"
        )
    if not zpin.available():
        raise IntegrityError(
            f"{key}: archive delta needs {zpin.IMPLEMENTATION}: "
            f"pip install {zpin.DISTRIBUTION}=={zpin.VERSION}"
        )
    canon_sha = meta.get(layout.META_CANONICAL_SHA, "")
    ref_canon_sha = meta.get(layout.META_REF_CANONICAL_SHA, "")
    size = layout.parse_int(
        meta.get(layout.META_CANONICAL_SIZE, ""), 0, DEFAULT_LIMITS.max_inflated
    )
    if not (_is_sha(canon_sha) and _is_sha(ref_canon_sha)) or size is None:
        raise IntegrityError(f"{key}: archive delta metadata is malformed")
    return canon_sha, size, ref_canon_sha


def _is_sha(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_memo(reader, ref_canon_sha: str, raw: Path, ref_canon: Path, fetch_raw,
               key: str) -> Memo | None:  # fmt: skip
    """The reference's stream memo for a read (the raw reference fetched if the canonical
    form came from the cache); None when the raw reference is missing or corrupt."""
    try:
        if not raw.exists():
            fetch_raw()
    except IntegrityError as exc:
        log.warning("%s: rebuilding without the reference's streams (%s)", key, exc)
        return None
    return reader.canonicals.streams(ref_canon_sha, raw, ref_canon)


def reconstruct(reader, record, base: Path, out: Path) -> None:
    """The original of an archive delta `record` into `out`, every step checked
    (IntegrityError naming the key, never other bytes)."""
    key = record.stored_key
    canon_sha, canon_size, ref_canon_sha = _checked_fields(key, record.metadata)
    with private_dir(base) as tmp:
        raw, ref_canon = tmp / "reference", tmp / "reference.canonical"
        delta, canon = tmp / "delta", tmp / "canonical"

        def fetch_raw() -> Path:
            try:
                reader.reference_file(record.ref_key, record.ref_sha256, raw, (key,))
            except NotFound:
                raise IntegrityError(f"{key}: its reference {record.ref_key} is missing") from None
            return raw

        try:
            reader.canonicals.materialise(ref_canon_sha, ref_canon, fetch_raw)
        except IntegrityError as exc:
            raise IntegrityError(f"{key}: {exc}") from None
        except ArchiveError as exc:
            raise IntegrityError(f"{key}: reference canonical form: {exc}") from None
        with delta.open("wb") as f:
            reader.objects.download(key, f)
        started = time.perf_counter()
        try:
            codec.decode(ref_canon, delta, canon, canon_size)
        except NoSpace:
            raise
        except Exception as exc:
            raise IntegrityError(f"{key}: cannot decode archive delta ({exc})") from None
        if sha256_file(canon) != canon_sha:
            raise IntegrityError(f"{key}: decoded canonical form sha256 mismatch")
        started = _charge("read: decode + check", started)
        memo = _read_memo(reader, ref_canon_sha, raw, ref_canon, fetch_raw, key)
        started = _charge("read: reference memo", started)
        try:
            _with_memo(lambda m: rebuild(canon, out, memo=m), memo, key)
        except ArchiveError as exc:
            raise IntegrityError(f"{key}: cannot rebuild archive ({exc})") from None
        _charge("read: rebuild", started)
    if sha256_file(out) != record.sha256:
        out.unlink(missing_ok=True)
        raise IntegrityError(f"{key}: rebuilt archive sha256 mismatch")
