"""The `adaptive-compatible` policy: keyframes, extra raw references deltaglider can read.

Besides `{prefix}/reference.bin` a deltaspace may hold keyframes, extra raw references at
`{prefix}/.dgfs/refs/<stamp>-<sha256[:16]>/reference.bin` (`<stamp>`: 16 hex digits of the
writer's clock in ns, so keys sort by age). A new file is encoded against the newest
reference(s) and the smallest delta kept; when even that delta exceeds `threshold` × size, the
file ALSO becomes a new keyframe and is stored as a zero-diff self-delta against it (as
deltaglider stores a deltaspace's first file). Every delta therefore points at a raw reference:
reconstruction is always one decode, and deltaglider reads every file (it resolves
`dirname(dg-ref-key)/reference.bin`). References are never user files, so deleting a file
never breaks another.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from core import codec, layout
from core.eligibility import looks_related, sniff, suffix_of
from core.errors import NotFound, PreconditionFailed
from core.layout import ObjectRecord
from core.policies.base import Candidate, ReferencePolicy, encode_delta
from core.policies.hidden import (
    collect_keyframes,
    current_ref_key,
    hidden_reference_keys,
    is_keyframe_key,
    keyframe_base,
)

log = logging.getLogger("dgfs.policies")


class AdaptiveCompatiblePolicy(ReferencePolicy):
    """Keyframes (extra raw references) promoted when deltas drift; every delta is depth 1."""

    name = "adaptive-compatible"

    def __init__(self, threshold: float = 0.3, tries: int = 2,
                 good_enough: float = 0.05) -> None:  # fmt: skip
        self.threshold = threshold  # best delta / size above this → the file becomes a keyframe
        self.tries = tries  # newest references tried per file
        self.good_enough = good_enough  # stop trying older references below this ratio

    # ---------------------------------------------------------------- candidates

    def candidates(self, store, prefix: str) -> list[Candidate]:
        """Raw keyframes newest first (chain links of `adaptive` are skipped: deltaglider
        could not read through them), then the deltaspace's reference.bin."""
        out: list[Candidate] = []
        for key in hidden_reference_keys(store, prefix):
            if len(out) >= self.tries:
                break
            try:
                rec = store.head_record(key)
            except NotFound:
                continue
            if rec.sha256 and layout.chain_parent(rec.metadata) is None:
                out.append(Candidate(key, rec.sha256, rec.metadata.get("dg-source-name", "")))
        if len(out) < self.tries:
            ref = store.references.get(prefix)
            if ref is not None:
                out.append(Candidate(ref.key, ref.sha256, ref.source_name))
        return out

    # ---------------------------------------------------------------- put

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        old_ref = current_ref_key(store, logical_key)
        with store.scratch() as tmp:
            if store.references.get(prefix) is None and store.references.create(
                prefix, src, sha, name
            ):
                ref = store.references.get(prefix)
                chosen = Candidate(ref.key, ref.sha256, ref.source_name)
                delta, local, transform = tmp / "self.delta", src, {}
                codec.encode(src, src, delta, sha)
            else:
                best = self._best_delta(store, src, name, sha, size, prefix, tmp)
                if best is None:
                    return None
                chosen, delta, local, transform = best
                if chosen.sha256 != sha and delta.stat().st_size > self.threshold * size:
                    chosen = self._promote(store, prefix, src, sha, name)
                    delta, local, transform = tmp / "self.delta", src, {}
                    codec.encode(src, src, delta, sha)
            record = store.write_delta(
                logical_key,
                delta,
                chosen,
                sha,
                size,
                extra,
                ensure=lambda: store.references.ensure(
                    chosen.key, chosen.sha256, chosen.source_name, local
                ),
                policy=self.name,
                transform=transform,
            )
        if record is not None and old_ref and old_ref != chosen.key and is_keyframe_key(old_ref):
            self.release(store, prefix)  # the overwritten delta may have been its last user
        return record

    def _best_delta(self, store, src: Path, name: str, sha: str, size: int, prefix: str,
                    tmp: Path) -> tuple[Candidate, Path, Path, dict] | None:  # fmt: skip
        """Encode against the newest references; the smallest (candidate, delta, ref copy,
        transform metadata)."""
        head = sniff(src)
        best = None
        for i, cand in enumerate(self.candidates(store, prefix)):
            ref_path, delta = tmp / f"ref{i}", tmp / f"delta{i}"
            if cand.sha256 == sha:
                shutil.copyfile(src, ref_path)
            else:
                store.reader.reference_file(cand.key, cand.sha256, ref_path)
                same_suffix = suffix_of(name) == suffix_of(cand.source_name) != ""
                if not looks_related(head, sniff(ref_path), same_suffix):
                    continue
            transform = encode_delta(store, cand, ref_path, src, sha, delta, name=name)
            if best is None or delta.stat().st_size < best[1].stat().st_size:
                best = (cand, delta, ref_path, transform)
            if cand.sha256 == sha or delta.stat().st_size <= self.good_enough * size:
                break
        return best

    def _promote(self, store, prefix: str, src: Path, sha: str, name: str) -> Candidate:
        """Write `src` as a new keyframe (conditional create; same bytes → same key reused)."""
        stamp = f"{time.time_ns():016x}"
        key = f"{keyframe_base(prefix)}{stamp}-{sha[:16]}/{layout.REFERENCE_NAME}"
        meta = layout.fit_metadata(layout.reference_metadata(store.tool, name, sha))
        try:
            store.store.put_file(key, src, layout.encode_metadata(meta), if_none_match=True)
        except PreconditionFailed:
            pass  # same stamp and content: the object holds exactly these bytes
        log.info("%s: new keyframe for %s", key, name)
        return Candidate(key, sha, name)

    # ---------------------------------------------------------------- release

    def release(self, store, prefix: str) -> None:
        collect_keyframes(store, prefix)
