"""The `deltaglider` policy (default): one `{prefix}/reference.bin` per deltaspace.

The first delta-eligible file written to a deltaspace becomes its reference (created with
If-None-Match: *, so concurrent first writers agree on one) and is stored as a zero-diff
self-delta, as deltaglider does. Later files are encoded against it, never replaced; a delta
larger than `max_ratio` × the file is stored direct, and so is a file that the similarity
estimate (core/similarity.py) finds sharing too little with the reference to be worth an
encode.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from core import codec, layout
from core.eligibility import looks_related, sniff, suffix_of
from core.errors import NotFound
from core.layout import ObjectRecord
from core.policies.base import Candidate, ReferencePolicy, encode_delta

log = logging.getLogger("dgfs.policies")


class DeltagliderPolicy(ReferencePolicy):
    """deltaglider's rule: every delta of a deltaspace against its one reference.bin."""

    name = "deltaglider"

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        ref = store.references.get(prefix)
        with store.scratch() as tmp:
            delta = tmp / "delta"
            if ref is None and store.references.create(prefix, src, sha, name):
                ref, local, transform = store.references.get(prefix), src, None
                try:
                    codec.encode(src, src, delta, sha)
                except Exception:
                    store.release_reference(prefix, local_copy=src)  # ours, no delta uses it yet
                    raise
            else:
                ref = ref or store.references.get(prefix)
                if ref is None:
                    raise NotFound(f"{layout.reference_key(prefix)}: vanished during create")
                local = tmp / "reference"
                if ref.sha256 == sha:
                    shutil.copyfile(src, local)
                else:
                    store.reader.reference_file(ref.key, ref.sha256, local)
                    same_suffix = suffix_of(name) == suffix_of(ref.source_name) != ""
                    if not looks_related(sniff(src), sniff(local), same_suffix):
                        return None
                    max_ratio = store.settings.max_ratio
                    # archives' bytes may differ where their content does not: no estimate,
                    # unless the reference is known to have no canonical form
                    archives = store.settings.archive_deltas and not (
                        store.reader.canonicals.lacks_form(ref.sha256)
                    )
                    if not archives and store.similarity.hopeless(
                        src, ref.sha256, local, max_ratio
                    ):
                        log.info("%s: shares too little with %s (estimate); storing direct",
                                 logical_key, ref.key)  # fmt: skip
                        return None
                limit = None if ref.sha256 == sha else int(store.settings.max_ratio * size)
                candidate = Candidate(ref.key, ref.sha256, ref.source_name)
                transform = encode_delta(store, candidate, local, src, sha, delta, limit, name)
                if transform is None:
                    log.info("%s: delta exceeds max ratio; storing direct", logical_key)
                    return None
            return store.write_delta(
                logical_key,
                delta,
                Candidate(ref.key, ref.sha256, ref.source_name),
                sha,
                size,
                extra,
                ensure=lambda: store.references.ensure(ref.key, ref.sha256, ref.source_name, local),
                transform=transform,
            )
