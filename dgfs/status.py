"""The mount's status JSON (`user.dg.mount.status` on the root, shown by `dgfs status`)."""

from __future__ import annotations

from core.deltastore import DeltaStore
from dgfs import xattrs
from dgfs.writeback import WriteBack


def mount_status(writeback: WriteBack, store: DeltaStore, cache, show_keys: bool = True) -> dict:
    """Pending and failed uploads, S3 requests, crash recovery and cache figures.

    Without `show_keys` (another user than the mount's owner or root asking, under
    allow_other), the upload lists are replaced by their lengths.
    """
    uploads, attributes = writeback.pending_keys()
    recovery = writeback.recovery
    values = {
        "pending_uploads": uploads,
        "pending_attributes": attributes,
        "failed_uploads": dict(writeback.failed_uploads),
        "write_back": {"mode": writeback.opts.write_back, **writeback.queue.status()},
        "s3_requests": store.requests,
        "delta_attempts_skipped": store.backoff.skipped,
        "delta_attempts_estimated_hopeless": store.similarity.skipped,
        "recovery": dict(recovery),
        "cache": cache.stats().as_dict() if cache is not None else {},
    }
    if not show_keys:
        for name in xattrs.KEY_LISTS:
            values[name] = len(values[name])
        values["recovery"] = {"state": recovery.get("state", "")}
        values["keys_hidden"] = True
    return values
