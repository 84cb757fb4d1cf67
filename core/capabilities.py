"""What an S3 endpoint really honours, probed once and cached per endpoint (issue #19).

S3 services differ exactly where dgfs's safety lives. `probe()` writes a few small objects under
a temporary prefix `.dgfs/probe/<uuid>/` of a bucket (hidden from mounts, deleted afterwards) and
checks, against the live server:

- ``conditional_put``: `If-None-Match: *` on PUT answers 412 for an existing key (and creates a
  missing one). dgfs's reference creation relies on it; without it ObjectStore falls back to
  create-then-verify (core/objectstore.py `create_then_verify`).
- ``put_if_match``: `If-Match: <etag>` on PUT answers 412 for a stale ETag, writes for the current.
- ``copy_if_match``: `x-amz-copy-source-if-match` on CopyObject, the same two cases.
- ``copy_metadata_replace``: CopyObject onto itself with `MetadataDirective=REPLACE` changes the
  metadata (dgfs's chmod/utimes/xattr path).
- ``metadata_2k_limit``: user metadata above S3's 2 KiB is rejected (dgfs keeps under it anyway).
- ``list_start_after``: ListObjectsV2 returns keys in UTF-8 byte order, honours `StartAfter`,
  and pages with continuation tokens.

Each answer is True (honoured), False (not) or None (could not tell: the detail says why). The
result is cached as JSON in `<cache dir>/capabilities.json`, keyed by endpoint, for
`DG_CAPS_TTL` seconds (default one day; 0 probes every time).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import AccessDenied, BucketNotFound, DgError, PreconditionFailed
from core.objectstore import ObjectStore

log = logging.getLogger("dgfs.caps")

PROBE_PREFIX = ".dgfs/probe/"
CACHE_NAME = "capabilities.json"
DEFAULT_TTL = 86400.0

CAPABILITIES: dict[str, str] = {
    "conditional_put": "PUT If-None-Match: * (412 on an existing key)",
    "put_if_match": "PUT If-Match: <etag>",
    "copy_if_match": "CopyObject x-amz-copy-source-if-match",
    "copy_metadata_replace": "CopyObject MetadataDirective=REPLACE",
    "metadata_2k_limit": "user metadata > 2 KiB rejected",
    "list_start_after": "ListObjectsV2 byte order, StartAfter, pages",
}


@dataclass
class Capabilities:
    """One endpoint's probe result."""

    endpoint: str
    probed_at: float
    results: dict[str, bool | None] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        """True only if the server was seen to honour `name` (unknown counts as missing)."""
        return self.results.get(name) is True

    def to_json(self) -> dict:
        return asdict(self)


class ProbeError(DgError):
    """The probe could not run at all (bucket missing, no access, endpoint down)."""


def endpoint_id(store: ObjectStore) -> str:
    """The cache key of a store's endpoint: its URL, or `aws:<region>`."""
    s = store.settings
    return s.endpoint_url or f"aws:{s.region or 'default'}"


# ---------------------------------------------------------------- probing


class _Probe:
    """The objects one probe run writes (all under `base`, all deleted at the end)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.base = f"{PROBE_PREFIX}{uuid.uuid4().hex}/"
        self.written: list[str] = []

    def put(self, name: str, body: bytes, meta: dict[str, str] | None = None, **extra) -> str:
        key = self.base + name
        self.track(key)
        r = self.store.call_raw("put_object", key, Key=key, Body=body, Metadata=meta or {}, **extra)
        return r["ETag"]

    def track(self, key: str) -> None:
        if key not in self.written:
            self.written.append(key)

    def cleanup(self) -> None:
        for key in self.written:
            try:
                self.store.delete(key)
            except DgError as exc:
                log.warning("capability probe: cannot delete %s: %s", key, exc)


def probe(store: ObjectStore) -> Capabilities:
    """Probe the server behind `store` (its bucket must exist and be writable)."""
    caps = Capabilities(endpoint_id(store), time.time())
    p = _Probe(store)
    try:
        try:
            p.put("a", b"first")
        except (BucketNotFound, AccessDenied) as exc:
            raise ProbeError(str(exc)) from None
        except DgError as exc:
            raise ProbeError(f"cannot write a probe object: {exc}") from None
        for name, check in _CHECKS:
            try:
                ok, detail = check(p)
            except (BucketNotFound, AccessDenied) as exc:
                raise ProbeError(str(exc)) from None
            except DgError as exc:
                ok, detail = None, f"error: {exc}"
            caps.results[name] = ok
            caps.details[name] = detail
    finally:
        p.cleanup()
    return caps


def _expect_412(fn) -> tuple[bool | None, str]:
    """(True, …) if fn raised PreconditionFailed, (False, …) if it succeeded."""
    try:
        fn()
    except PreconditionFailed:
        return True, "412"
    except DgError as exc:
        return None, f"error: {exc}"
    return False, "accepted (condition ignored)"


WRONG_ETAG = '"00000000000000000000000000000000"'


def _check_conditional_put(p: _Probe):
    ok, detail = _expect_412(lambda: p.put("a", b"second", IfNoneMatch="*"))
    if ok is not True:
        return ok, f"existing key: {detail}"
    try:
        p.put("new", b"new", IfNoneMatch="*")
    except DgError as exc:
        return False, f"412 on existing, but a new key was refused: {exc}"
    return True, "412 on existing key, new key created"


def _check_put_if_match(p: _Probe):
    ok, detail = _expect_412(lambda: p.put("a", b"stale", IfMatch=WRONG_ETAG))
    if ok is not True:
        return ok, f"stale ETag: {detail}"
    current = p.store.head(p.base + "a").etag
    try:
        p.put("a", b"first", IfMatch=current)
    except DgError as exc:
        try:  # Ceph RGW 16 compares the ETag without its quotes
            p.put("a", b"first", IfMatch=current.strip('"'))
        except DgError:
            return False, f"412 on stale ETag, but the current ETag was refused: {exc}"
        return False, "412 on stale ETag; the current ETag matches only unquoted (non-standard)"
    return True, "412 on stale ETag, current ETag writes"


def _check_copy_if_match(p: _Probe):
    src, dst = p.base + "a", p.base + "copy"
    p.track(dst)

    def copy(etag: str) -> None:
        p.store.call_raw(
            "copy_object",
            dst,
            Key=dst,
            CopySource={"Bucket": p.store.bucket, "Key": src},
            CopySourceIfMatch=etag,
        )

    ok, detail = _expect_412(lambda: copy(WRONG_ETAG))
    if ok is not True:
        return ok, f"stale ETag: {detail}"
    try:
        copy(p.store.head(src).etag)
    except DgError as exc:
        return False, f"412 on stale ETag, but the current ETag was refused: {exc}"
    return True, "412 on stale ETag, current ETag copies"


def _check_metadata_replace(p: _Probe):
    key = p.base + "meta"
    p.put("meta", b"m", {"dgfs-probe": "1"})
    p.store.call_raw(
        "copy_object",
        key,
        Key=key,
        CopySource={"Bucket": p.store.bucket, "Key": key},
        Metadata={"dgfs-probe": "2"},
        MetadataDirective="REPLACE",
    )
    got = (p.store.head(key).metadata or {}).get("dgfs-probe")
    if got == "2":
        return True, "metadata replaced in place"
    return False, f"metadata after REPLACE copy: {got!r}"


def _check_metadata_limit(p: _Probe):
    try:
        p.put("big", b"b", {"dgfs-big": "x" * 2100})
    except DgError as exc:
        return True, f"rejected: {exc}"
    size = len((p.store.head(p.base + "big").metadata or {}).get("dgfs-big", ""))
    return False, f"accepted 2.1 KiB of metadata (stored {size} bytes)"


def _check_list(p: _Probe):
    names = ["b", "B", "a-1", "a~", "a1", "é", "z"]
    prefix = p.base + "l/"
    for name in names:
        p.put("l/" + name, b"l")
    want = sorted(n.encode() for n in names)

    def rel(keys) -> list[bytes]:
        return [k.removeprefix(prefix).encode() for k in keys]

    keys = rel(o.key for page in p.store.list_pages(prefix, delimiter=None) for o in page.objects)
    if keys != want:
        return False, f"order {[k.decode() for k in keys]}"
    r = p.store.call_raw("list_objects_v2", prefix, Prefix=prefix, StartAfter=prefix + "a~")
    after = rel(o["Key"] for o in r.get("Contents", []))
    if after != [k for k in want if k > b"a~"]:
        return False, f"StartAfter gave {[k.decode() for k in after]}"
    paged: list[bytes] = []
    token = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        r = p.store.call_raw("list_objects_v2", prefix, Prefix=prefix, MaxKeys=2, **extra)
        paged += rel(o["Key"] for o in r.get("Contents", []))
        if not r.get("IsTruncated"):
            break
        token = r["NextContinuationToken"]
    if paged != want:
        return False, f"paging gave {[k.decode() for k in paged]}"
    return True, "byte order, StartAfter and 2-key pages correct"


_CHECKS = (
    ("conditional_put", _check_conditional_put),
    ("put_if_match", _check_put_if_match),
    ("copy_if_match", _check_copy_if_match),
    ("copy_metadata_replace", _check_metadata_replace),
    ("metadata_2k_limit", _check_metadata_limit),
    ("list_start_after", _check_list),
)


# ---------------------------------------------------------------- cache


def cache_file(cache_dir: Path | None = None) -> Path:
    from core.cache.settings import default_cache_dir

    return (cache_dir or default_cache_dir()) / CACHE_NAME


def ttl_from_env() -> float:
    try:
        return float(os.environ.get("DG_CAPS_TTL", DEFAULT_TTL))
    except ValueError:
        return DEFAULT_TTL


def load_cached(path: Path, endpoint: str, ttl: float) -> Capabilities | None:
    """The cached result for `endpoint` if younger than `ttl` seconds."""
    try:
        entry = json.loads(path.read_text()).get(endpoint)
        caps = Capabilities(**entry)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if ttl <= 0 or not 0 <= time.time() - caps.probed_at < ttl:
        return None
    return caps


def save(path: Path, caps: Capabilities) -> None:
    """Merge `caps` into the cache file (0600, written atomically)."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[caps.endpoint] = caps.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache capabilities in %s: %s", path, exc)


def conditional_put_mode() -> str:
    """`DG_CONDITIONAL_PUT`: auto (probe, default), on (trust the server), off (fallback)."""
    mode = os.environ.get("DG_CONDITIONAL_PUT", "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"DG_CONDITIONAL_PUT={mode!r}: expected auto, on or off")
    return mode


def cached_probe(
    store: ObjectStore, cache_dir: Path | None = None, ttl: float | None = None
) -> Capabilities:
    """The endpoint's capabilities from the cache, else probed now (and cached)."""
    path = cache_file(cache_dir)
    ttl = ttl_from_env() if ttl is None else ttl
    caps = load_cached(path, endpoint_id(store), ttl)
    if caps is None:
        caps = probe(store)
        if None not in caps.results.values():  # a transient error is not cached for a day
            save(path, caps)
    return caps


# ---------------------------------------------------------------- fallback
