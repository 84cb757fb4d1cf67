"""The `user.dg.*` view of a file's storage, and the rules for user-set attributes."""

from __future__ import annotations

from core.layout import META_INFLATED, META_KEPT, META_TRANSFORM, Kind, ObjectRecord

DG_PREFIX = "user.dg."
USER_PREFIX = "user."
STATUS_NAME = "user.dg.mount.status"  # on the mount root: JSON for `dgfs status`
FLUSH_NAME = "user.dg.mount.flush"  # set on the mount root: upload everything pending now
# status fields naming keys: shown to the mount's owner and root only, counts to others
KEY_LISTS = ("pending_uploads", "pending_attributes", "failed_uploads")


def file_xattrs(record: ObjectRecord) -> dict[str, str]:
    """Per-file storage facts as plain text (read-only; computed from metadata only)."""
    kind = "symlink" if record.is_symlink else record.kind.value
    original = max(record.original_size, 0)
    values = {
        "kind": kind,
        "original-size": str(original),
        "stored-size": str(record.stored_size),
        "ratio": f"{record.ratio:.4f}",
        "saved-bytes": str(original - record.stored_size),
        "stored-key": record.stored_key,
    }
    if record.sha256:
        values["sha256"] = record.sha256
    if record.kind == Kind.DELTA:
        values["ref-key"] = record.ref_key or ""
        values["ref-sha256"] = record.ref_sha256 or ""
        transform = record.metadata.get(META_TRANSFORM)
        if transform:  # an archive delta (core/archivedelta.py)
            values["transform"] = transform
            values["inflated"] = record.metadata.get(META_INFLATED, "")
            values["kept"] = record.metadata.get(META_KEPT, "")
    if record.tool:
        values["tool"] = record.tool
    return {DG_PREFIX + k: v for k, v in values.items()}


def is_dg_name(name: str) -> bool:
    return name.startswith(DG_PREFIX)


def is_user_name(name: str) -> bool:
    """Only the `user.` namespace is stored; others get ENOTSUP."""
    return name.startswith(USER_PREFIX) and not is_dg_name(name)
