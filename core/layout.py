"""The deltaglider bucket layout as pure functions: keys, metadata ⇄ records. No I/O.

See `docs/FORMAT.md` (and deltaglider-format.md in the spec) for the layout itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import posixpath
import re
import stat
from dataclasses import dataclass, field
from email.header import decode_header
from enum import StrEnum

from core.errors import InvalidName, MetadataTooLarge

REFERENCE_NAME = "reference.bin"
DELTA_SUFFIX = ".delta"
HIDDEN_SEGMENTS = (".deltaglider", ".dgfs")
METADATA_LIMIT = 2048  # S3: sum of UTF-8 bytes of user metadata keys and values
ENCODED_PREFIX = "=?UTF-8?B?"
ENCODED_SUFFIX = "?="

# dgfs's own POSIX attribute keys (deltaglider ignores unknown keys).
META_MODE, META_UID, META_GID, META_MTIME = "dgfs-mode", "dgfs-uid", "dgfs-gid", "dgfs-mtime"
# the last change of the inode (chmod, chown, utimes, rename, write), ns; absent: mtime.
# `dgfs-rdev`: a device's st_rdev (s3fs writes `rdev`)
# `dgfs-atime`: only once utimensat set it (reads do not update it; absent: mtime)
META_CTIME, META_RDEV, META_ATIME = "dgfs-ctime", "dgfs-rdev", "dgfs-atime"
POSIX_KEYS = (META_MODE, META_UID, META_GID, META_MTIME, META_CTIME, META_RDEV, META_ATIME)
XATTR_META_PREFIX = "dgfs-x-"
XATTR_HEX_PREFIX = "dgfs-xh-"
# dgfs-only reference chains (the `adaptive` policy): a hidden reference whose body is a delta
# against its parent hidden reference; deltaglider ignores these keys and fails the sha check
META_CHAIN_PARENT = "dgfs-chain-parent"
META_CHAIN_PARENT_SHA = "dgfs-chain-parent-sha256"
META_CHAIN_DEPTH = "dgfs-chain-depth"
# a stream link (core/policies/stream.py): its body is a delta against its stream's source,
# not against its parent's content; `dgfs-body-sha256` is the sha256 of that body (checked
# when it is a source)
META_CHAIN_MODE = "dgfs-chain-mode"
META_BODY_SHA = "dgfs-body-sha256"
STREAM_MODE = "stream"
META_POLICY = "dgfs-policy"  # the reference policy that wrote a delta (absent: deltaglider's)
# dgfs-only archive deltas (issue #14, core/archivedelta.py): the body is an xdelta3 delta of
# canonical(reference) → canonical(file) (core/archive); deltaglider fails its sha check
META_TRANSFORM = "dgfs-transform"  # containers seen through: zip, gzip, zip+gzip
META_TRANSFORM_VERSION = "dgfs-transform-version"
META_DEFLATE = "dgfs-deflate"  # the deflate implementation that rebuilds it: zlib-1.3.2
META_CANONICAL_SHA = "dgfs-canonical-sha256"
META_CANONICAL_SIZE = "dgfs-canonical-size"
META_REF_CANONICAL_SHA = "dgfs-ref-canonical-sha256"
META_INFLATED = "dgfs-inflated"  # payload bytes of the deflate streams stored inflated
META_KEPT = "dgfs-kept"  # bytes of deflate streams kept compressed (not reproducible)
_SAFE_XATTR = re.compile(r"[a-z0-9._-]+")

# ranges of parsed metadata fields (what the kernel's and pyfuse3's C fields hold)
MAX_MODE = 0o177777  # file type and permission bits
MAX_ID = 2**32 - 2  # uid_t / gid_t; 2**32 - 1 is (uid_t)-1, "no id"
MAX_RDEV = 2**64 - 1  # dev_t
MAX_SIZE = 2**63 - 1  # off_t
MIN_NS, MAX_NS = -(2**63), 2**63 - 1  # timestamps in ns, as pyfuse3 stores them
PATH_MAX = 4096  # longest symlink target dgfs reads; larger "symlinks" are regular files
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}")  # ASCII only: '²' passes str.isdigit(), not int()
_OCTAL = re.compile(r"0[0-7]{0,39}")
_WARN_LIMIT = 10_000
_warned: set[tuple[str, str]] = set()
log = logging.getLogger("core.layout")


class Kind(StrEnum):
    """How a logical file is stored."""

    DELTA = "delta"  # `<name>.delta`, xdelta3 against the deltaspace's reference
    DIRECT = "direct"  # `<name>` raw, with dg metadata and `dg-compression: none`
    PLAIN = "plain"  # `<name>` raw, written by another tool, no sha256


@dataclass(frozen=True)
class PosixAttrs:
    """POSIX attributes kept in object metadata; None = not recorded."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    foreign: bool = False  # `mode` came from another tool's key (s3fs/rclone), not dgfs-mode
    ctime_ns: int | None = None
    rdev: int | None = None
    atime_ns: int | None = None


@dataclass(frozen=True)
class ObjectRecord:
    """What the store knows about one logical file, from one HEAD."""

    logical_key: str
    stored_key: str
    kind: Kind
    stored_size: int
    original_size: int
    etag: str
    last_modified_ns: int
    sha256: str | None = None
    ref_key: str | None = None
    ref_sha256: str | None = None
    tool: str | None = None
    attrs: PosixAttrs = field(default_factory=PosixAttrs)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Stored over original bytes (the sense of DG_MAX_RATIO); 0 for empty files."""
        return self.stored_size / self.original_size if self.original_size else 0.0

    @property
    def is_symlink(self) -> bool:
        """Marked as a symlink and small enough to be one (larger bodies are regular files)."""
        return (
            self.attrs.mode is not None
            and stat.S_ISLNK(self.attrs.mode)
            and 0 < self.original_size <= PATH_MAX
            and self.stored_size <= PATH_MAX
        )


# ---------------------------------------------------------------- keys


def deltaspace_of(key: str) -> str:
    """The parent prefix of a key ('' at the bucket root), as deltaglider computes it."""
    return key.rsplit("/", 1)[0] if "/" in key else ""


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def reference_key(prefix: str) -> str:
    return join_key(prefix, REFERENCE_NAME)


def delta_key(logical_key: str) -> str:
    return logical_key + DELTA_SUFFIX


def reference_for_ref_key(ref_key: str) -> str:
    """deltaglider's rule: the base of a delta is `dirname(dg-ref-key)/reference.bin`."""
    return reference_key(posixpath.dirname(ref_key))


def chain_parent(meta: dict[str, str]) -> tuple[str, str] | None:
    """(parent key, parent sha256) of a dgfs chain reference stored as a delta, else None."""
    parent, sha = meta.get(META_CHAIN_PARENT), meta.get(META_CHAIN_PARENT_SHA)
    return (parent, sha) if parent and sha else None


def is_stream_link(meta: dict[str, str]) -> bool:
    """A chain reference whose body is a delta against its stream's source
    (core/policies/stream.py)."""
    return meta.get(META_CHAIN_MODE) == STREAM_MODE and chain_parent(meta) is not None


def is_hidden_key(key: str) -> bool:
    """Keys a filesystem view never shows: references and tool-private prefixes."""
    parts = key.split("/")
    return parts[-1] == REFERENCE_NAME or any(p in HIDDEN_SEGMENTS for p in parts[:-1])


def check_logical_name(logical_key: str) -> None:
    """Refuse names that would collide with the layout (documented in docs/SEMANTICS.md)."""
    name = logical_key.rsplit("/", 1)[-1]
    if not name or name in (".", ".."):
        raise InvalidName(f"{logical_key!r}: empty or dot name")
    if name == REFERENCE_NAME:
        raise InvalidName(f"{logical_key!r}: 'reference.bin' is reserved by the deltaglider layout")
    if name.endswith(DELTA_SUFFIX):
        raise InvalidName(f"{logical_key!r}: names ending in '.delta' are reserved")
    if any(p in HIDDEN_SEGMENTS for p in logical_key.split("/")):
        raise InvalidName(f"{logical_key!r}: '.deltaglider' and '.dgfs' are reserved")
    if len(logical_key.encode()) + len(DELTA_SUFFIX) > 1024:
        raise InvalidName(f"{logical_key!r}: key longer than S3's 1024 bytes")


# ---------------------------------------------------------------- metadata values


def encode_value(value: str) -> str:
    """Make a metadata value sendable by boto3 (ASCII only): RFC 2047 base64 when needed.

    Values that are printable ASCII and do not start with '=?' pass unchanged, so a value
    deltaglider wrote (even one containing '%') is never mis-decoded.
    """
    if value.isascii() and value.isprintable() and not value.startswith("=?"):
        return value
    return ENCODED_PREFIX + base64.b64encode(value.encode()).decode() + ENCODED_SUFFIX


def decode_value(value: str) -> str:
    """Inverse of encode_value; also decodes RFC 2047 values that servers (AWS) return."""
    if not (value.startswith("=?") and value.endswith("?=")):
        return value
    try:
        parts = decode_header(value)
        return "".join(p.decode(c or "utf-8") if isinstance(p, bytes) else p for p, c in parts)
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def decode_metadata(raw: dict[str, str]) -> dict[str, str]:
    """Lowercase keys and decode values of a HEAD/GET metadata dict."""
    return {k.lower(): decode_value(v) for k, v in raw.items()}


def encode_metadata(meta: dict[str, str]) -> dict[str, str]:
    """Encode values for boto3 and enforce S3's 2 KiB limit (MetadataTooLarge beyond it)."""
    encoded = {k.lower(): encode_value(v) for k, v in meta.items()}
    if metadata_size(encoded) > METADATA_LIMIT:
        raise MetadataTooLarge(f"user metadata is {metadata_size(encoded)} bytes (S3 limit 2048)")
    return encoded


def metadata_size(meta: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def fit_metadata(meta: dict[str, str]) -> dict[str, str]:
    """Shrink informational fields until the encoded metadata fits in 2 KiB.

    Fallback for very long names: drop `dg-delta-cmd`, then shorten `dg-original-name` /
    `dg-source-name` (keeping their tail). Fields readers need are never touched.
    """
    meta = dict(meta)
    if metadata_size(_encoded(meta)) <= METADATA_LIMIT:
        return meta
    meta.pop("dg-delta-cmd", None)
    for name_field in ("dg-original-name", "dg-source-name"):
        while name_field in meta and metadata_size(_encoded(meta)) > METADATA_LIMIT:
            value = meta[name_field]
            if len(value) <= 16:
                meta.pop(name_field)
                break
            meta[name_field] = "…" + value[len(value) // 2 :]
    return meta


def _encoded(meta: dict[str, str]) -> dict[str, str]:
    return {k: encode_value(v) for k, v in meta.items()}


def meta_field(meta: dict[str, str], name: str) -> str | None:
    """First non-empty value among every spelling deltaglider accepts for field `name`.

    `name` is the hyphen form without prefix, e.g. 'file-sha256'.
    """
    under = name.replace("-", "_")
    for key in (f"dg-{name}", f"dg_{under}", under, name):
        value = meta.get(key)
        if value:
            return value
    return None


def parse_int(text: str, lo: int, hi: int, octal: bool = False) -> int | None:
    """`text` as an ASCII integer in [lo, hi] (octal: with a leading 0), else None."""
    if not (_OCTAL if octal else _DECIMAL).fullmatch(text):
        return None
    value = int(text, 8 if octal else 10)
    return value if lo <= value <= hi else None


def ignored_field(key: str, name: str, value: str) -> None:
    """Log (once per object and field) that a metadata field is unusable and ignored."""
    if (key, name) in _warned:
        return
    if len(_warned) < _WARN_LIMIT:
        _warned.add((key, name))
    log.warning("%s: ignoring metadata field %s=%r (malformed or out of range)", key, name, value)


def _checked(meta: dict[str, str], key: str, name: str, parsed: int | None) -> int | None:
    if parsed is None and meta.get(name):
        ignored_field(key, name, meta[name])
    return parsed


def _int_field(meta: dict[str, str], key: str, names: tuple[str, ...], hi: int) -> int | None:
    """The first valid value among `names` (0..hi); s3fs's `mode` is decimal, rclone's octal."""
    for name in names:
        value = meta.get(name)
        if value:
            octal = name == "mode" and value.startswith("0")
            parsed = _checked(meta, key, name, parse_int(value, 0, hi, octal))
            if parsed is not None:
                return parsed
    return None


def _seconds_ns(value: str) -> int | None:
    """s3fs's integer seconds, rclone's float seconds or RFC 3339 time, in ns (None if bad)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = _rfc3339_seconds(value)
    ns = None if seconds is None else seconds * 1e9
    return round(ns) if ns is not None and MIN_NS < ns < MAX_NS else None  # False for nan


def _rfc3339_seconds(value: str) -> float | None:
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _mtime_ns(meta: dict[str, str], key: str) -> int | None:
    value = meta.get(META_MTIME)
    if value:
        parsed = _checked(meta, key, META_MTIME, parse_int(value, MIN_NS, MAX_NS))
        if parsed is not None:
            return parsed
    value = meta.get("mtime")
    return _checked(meta, key, "mtime", _seconds_ns(value)) if value else None


def posix_attrs_from(meta: dict[str, str], key: str = "") -> PosixAttrs:
    """dgfs's attributes, falling back to s3fs's / rclone's `mode`, `uid`, `gid`, `mtime`.

    Each field is validated (ASCII integer in range); a bad one is ignored and logged once
    for object `key`, never an error.
    """
    own = _int_field(meta, key, (META_MODE,), MAX_MODE)
    other = _int_field(meta, key, ("mode",), MAX_MODE) if own is None else None
    return PosixAttrs(
        mode=own if own is not None else other,
        uid=_int_field(meta, key, (META_UID, "uid"), MAX_ID),
        gid=_int_field(meta, key, (META_GID, "gid"), MAX_ID),
        mtime_ns=_mtime_ns(meta, key),
        foreign=other is not None,
        ctime_ns=_ns_field(meta, key, META_CTIME),
        rdev=_int_field(meta, key, (META_RDEV,) if own is not None else ("rdev",), MAX_RDEV),
        atime_ns=_ns_field(meta, key, META_ATIME),
    )


def _ns_field(meta: dict[str, str], key: str, name: str) -> int | None:
    value = meta.get(name)
    return _checked(meta, key, name, parse_int(value, MIN_NS, MAX_NS)) if value else None


def trusted_mode(attrs: PosixAttrs, suid: bool, dev: bool) -> int | None:
    """The mode a mount shows for a file's `attrs`: without `suid`, setuid/setgid/sticky bits
    from another tool's `mode` are dropped; devices, FIFOs and sockets are shown as such when
    dgfs wrote them (`dgfs-mode`, as mknod stores them) and, from another tool's `mode`, only
    with `dev`; other unknown types are regular files. Directory and symlink types are the
    caller's business."""
    mode = attrs.mode
    if not mode:
        return mode
    if attrs.foreign and not suid:
        mode &= ~SPECIAL_BITS
    kind = stat.S_IFMT(mode)
    special_ok = is_special(kind) and (dev or not attrs.foreign)
    if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK) and not special_ok:
        mode = stat.S_IFREG | stat.S_IMODE(mode)
    return mode


def is_special(kind: int) -> bool:
    """A file type stored as metadata only: device, FIFO or socket."""
    return kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


def posix_attrs_to_meta(attrs: PosixAttrs) -> dict[str, str]:
    out = {}
    for key, value in (
        (META_MODE, attrs.mode),
        (META_UID, attrs.uid),
        (META_GID, attrs.gid),
        (META_MTIME, attrs.mtime_ns),
        (META_CTIME, attrs.ctime_ns),
        (META_RDEV, attrs.rdev),
        (META_ATIME, attrs.atime_ns),
    ):
        if value is not None:
            out[key] = str(value)
    return out


def _xattr_meta_key(name: str) -> str:
    """Metadata key of a user xattr: readable when S3's lowercasing cannot alter it, else hex."""
    if _SAFE_XATTR.fullmatch(name):
        return XATTR_META_PREFIX + name
    return XATTR_HEX_PREFIX + name.encode().hex()


def xattrs_from(meta: dict[str, str]) -> dict[str, bytes]:
    """User extended attributes stored as `dgfs-x-<name>` / `dgfs-xh-<hex name>` (value base64)."""
    out = {}
    for key, value in meta.items():
        try:
            if key.startswith(XATTR_HEX_PREFIX):
                name = bytes.fromhex(key[len(XATTR_HEX_PREFIX) :]).decode()
            elif key.startswith(XATTR_META_PREFIX):
                name = key[len(XATTR_META_PREFIX) :]
            else:
                continue
            out[name] = base64.b64decode(value)
        except ValueError:
            continue
    return out


def xattrs_to_meta(xattrs: dict[str, bytes]) -> dict[str, str]:
    return {_xattr_meta_key(k): base64.b64encode(v).decode() for k, v in xattrs.items()}


# ---------------------------------------------------------------- classification


def record_from_head(
    stored_key: str,
    size: int,
    etag: str,
    last_modified_ns: int,
    raw_meta: dict[str, str],
) -> ObjectRecord:
    """Classify one object from its HEAD (key, size, ETag, metadata) as deltaglider does."""
    meta = decode_metadata(raw_meta)
    sha = meta_field(meta, "file-sha256")
    tool = meta_field(meta, "tool")
    is_delta_key = stored_key.endswith(DELTA_SUFFIX)
    logical = stored_key[: -len(DELTA_SUFFIX)] if is_delta_key else stored_key
    common = dict(
        logical_key=logical,
        stored_key=stored_key,
        stored_size=size,
        etag=etag,
        last_modified_ns=last_modified_ns,
        tool=tool,
        attrs=posix_attrs_from(meta, stored_key),
        xattrs=xattrs_from(meta),
        metadata=meta,
    )
    if is_delta_key and sha:
        return ObjectRecord(
            kind=Kind.DELTA,
            original_size=_file_size(meta, stored_key),
            sha256=sha,
            ref_key=_delta_reference(stored_key, meta),
            ref_sha256=meta_field(meta, "ref-sha256"),
            **common,
        )
    if sha:  # compression none, proxy passthrough, or any raw body carrying a sha256
        return ObjectRecord(kind=Kind.DIRECT, original_size=size, sha256=sha, **common)
    return ObjectRecord(kind=Kind.PLAIN, original_size=size, **common)


def _file_size(meta: dict[str, str], key: str) -> int:
    """A delta's `dg-file-size` (0..2**63-1); -1 when missing or bad (reading it fails)."""
    value = meta_field(meta, "file-size")
    size = parse_int(value, 0, MAX_SIZE) if value else None
    if size is None and value:
        ignored_field(key, "dg-file-size", value)
    return -1 if size is None else size


def _delta_reference(stored_key: str, meta: dict[str, str]) -> str:
    ref_key = meta_field(meta, "ref-key")
    if ref_key:
        return reference_for_ref_key(ref_key.lstrip("/"))
    ref_path = meta_field(meta, "ref-path")  # the Rust proxy: relative to the deltaspace
    if ref_path:  # not normalised: a path through `..` must fail ref_key_allowed
        return join_key(deltaspace_of(stored_key), ref_path)
    return reference_key(deltaspace_of(stored_key))


def ref_key_allowed(stored_key: str, ref_key: str) -> bool:
    """Whether a delta may use `ref_key`: its own deltaspace's reference.bin, or a dgfs hidden
    reference under `<deltaspace>/.dgfs/`; never another deltaspace, `.` or `..`."""
    space = deltaspace_of(stored_key)
    if ref_key == reference_key(space):
        return True
    hidden = join_key(space, ".dgfs") + "/"
    rest = ref_key[len(hidden) :].split("/")
    return ref_key.startswith(hidden) and all(p not in ("", ".", "..") for p in rest)


# ---------------------------------------------------------------- metadata we write


def now_stamp(with_z: bool) -> str:
    """deltaglider's timestamps: ISO 8601 UTC with microseconds, 'Z' on deltas/references."""
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    return stamp + "Z" if with_z else stamp


def reference_metadata(tool: str, source_name: str, sha256: str) -> dict[str, str]:
    return {
        "dg-tool": tool,
        "dg-source-name": source_name,
        "dg-file-sha256": sha256,
        "dg-created-at": now_stamp(True),
        "dg-note": "reference",
    }


def delta_metadata(
    tool: str,
    name: str,
    sha256: str,
    size: int,
    ref_key: str,
    ref_sha256: str,
    delta_size: int,
    zero_diff: bool,
) -> dict[str, str]:
    meta = {
        "dg-tool": tool,
        "dg-original-name": name,
        "dg-file-sha256": sha256,
        "dg-file-size": str(size),
        "dg-created-at": now_stamp(True),
        "dg-ref-key": ref_key,
        "dg-ref-sha256": ref_sha256,
        "dg-delta-size": str(delta_size),
        "dg-delta-cmd": f"xdelta3 -e -9 -s {REFERENCE_NAME} {name} {name}{DELTA_SUFFIX}",
    }
    if zero_diff:
        meta["dg-note"] = "zero-diff (reference identical)"
    return meta


def direct_metadata(tool: str, name: str, sha256: str, size: int) -> dict[str, str]:
    return {
        "dg-tool": tool,
        "dg-original-name": name,
        "dg-file-sha256": sha256,
        "dg-file-size": str(size),
        "dg-created-at": now_stamp(False),
        "dg-compression": "none",
    }
