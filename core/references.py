"""Each deltaspace's `reference.bin`: a memo of its HEAD, its conditional creation, and the
delete protocol.

Delete protocol (safe against a writer in another process encoding against the reference
right now): list the deltaspace (delimited, so sibling prefixes such as `releases2/` never
count); if no `.delta` remains, keep the reference's bytes, delete it, and list again: if a
delta appeared meanwhile, restore the reference (conditional create). A writer, after putting
its delta, HEADs the reference and restores it from its own copy if it is gone (`ensure`).
Whichever order the requests land in, a delta never outlives its reference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from core import layout
from core.errors import IntegrityError, NotFound, PreconditionFailed
from core.layout import ObjectRecord
from core.objectstore import ObjectStore

log = logging.getLogger("dgfs.store")


@dataclass(frozen=True)
class Reference:
    """A deltaspace's `reference.bin` as its HEAD describes it."""

    key: str
    sha256: str
    size: int
    source_name: str


class References:
    """The `reference.bin` of every deltaspace one store has seen, and their lifecycle."""

    def __init__(
        self,
        objects: ObjectStore,
        head: Callable[[str], ObjectRecord],
        tool: str,
        scratch: Callable[[], AbstractContextManager[Path]],
    ) -> None:
        self.objects = objects
        self.tool = tool
        self._head = head
        self._scratch = scratch
        self._refs: dict[str, Reference] = {}
        self._lock = threading.Lock()

    def forget_below(self, old: str) -> None:
        """Forget what was remembered at or under prefix `old` (a directory moved away)."""
        with self._lock:
            self._refs = {
                p: r for p, r in self._refs.items() if not (p + "/").startswith(old + "/")
            }

    def get(self, prefix: str) -> Reference | None:
        """The deltaspace's reference (remembered once seen), or None if it has none."""
        with self._lock:
            known = self._refs.get(prefix)
        if known is not None:
            return known
        try:
            record = self._head(layout.reference_key(prefix))
        except NotFound:
            return None
        return self._remember(prefix, record.stored_key, record)

    def known(self, prefix: str) -> Reference | None:
        """The deltaspace's reference if this store has already seen it (no I/O)."""
        with self._lock:
            return self._refs.get(prefix)

    def _remember(self, prefix: str, key: str, record: ObjectRecord) -> Reference:
        if not record.sha256:
            raise IntegrityError(f"{key}: reference without dg-file-sha256")
        ref = Reference(
            key, record.sha256, record.stored_size, record.metadata.get("dg-source-name", "")
        )
        with self._lock:
            self._refs[prefix] = ref
        return ref

    def forget(self, prefix: str) -> None:
        with self._lock:
            self._refs.pop(prefix, None)

    def create(self, prefix: str, src: Path, sha256: str, name: str) -> bool:
        """Try to make `src` the deltaspace's reference (If-None-Match: *); True if we won."""
        key = layout.reference_key(prefix)
        meta = layout.fit_metadata(layout.reference_metadata(self.tool, name, sha256))
        try:
            self.objects.put_file(key, src, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            log.info("reference %s: another writer created it first; encoding against theirs", key)
            self.forget(prefix)
            return False
        with self._lock:
            self._refs[prefix] = Reference(key, sha256, src.stat().st_size, name)
        return True

    def ensure(self, key: str, sha256: str, source_name: str, local: Path) -> None:
        """Writer half of the delete protocol: the reference must exist after our delta does.

        If a concurrent delete removed it between our encode and our PUT, put it back from
        `local`, the bytes we encoded against (conditional create, so two restorers agree).
        Without `local` it cannot: IntegrityError (the write fails and is retried).
        """
        try:
            self.objects.head(key)
            return
        except NotFound:
            pass
        if not local.exists():
            self.forget(layout.deltaspace_of(key))
            raise IntegrityError(
                f"{key}: reference vanished while writing and its bytes are not here to restore it"
            )
        log.warning("%s: reference vanished while writing; restoring it", key)
        meta = layout.fit_metadata(layout.reference_metadata(self.tool, source_name, sha256))
        try:
            self.objects.put_file(key, local, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            pass
        self.forget(layout.deltaspace_of(key))

    def has_deltas(self, prefix: str) -> bool:
        """Whether the deltaspace holds a `.delta` (delimited: sibling prefixes don't count)."""
        base = f"{prefix}/" if prefix else ""
        return any(
            o.key.endswith(layout.DELTA_SUFFIX)
            for page in self.objects.list_pages(base)
            for o in page.objects
        )

    def remove_unused(self, ref_key: str, local_copy: Path | None = None) -> bool:
        """Delete `ref_key` unless a delta is, or appears, in its deltaspace; True if removed.

        The delete half of the protocol in `delete`: list, keep the bytes (`local_copy` if the
        caller has them), delete, list again, and restore (conditional create, original
        metadata) if a delta appeared meanwhile.
        """
        prefix = layout.deltaspace_of(ref_key)
        if self.has_deltas(prefix):
            return False
        self.forget(prefix)
        with self._scratch() as tmp:
            kept = local_copy or tmp / "reference"
            try:
                if local_copy is None:
                    with kept.open("wb") as f:
                        info, _ = self.objects.download(ref_key, f)
                else:
                    info = self.objects.head(ref_key)
            except NotFound:
                return False
            self.objects.delete(ref_key)
            if not self.has_deltas(prefix):
                return True
            log.warning("%s: a delta appeared while deleting; restoring reference", ref_key)
            try:
                self.objects.put_file(ref_key, kept, info.metadata or {}, if_none_match=True)
            except PreconditionFailed:
                pass
        return False
