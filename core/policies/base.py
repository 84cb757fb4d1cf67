"""The interface every reference policy implements, and what they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import archivedelta
from core.layout import ObjectRecord

MAX_DECODES = 4  # sequential decodes to read any file, its own included (compatible: 1)


@dataclass(frozen=True)
class Candidate:
    """A raw reference a new file may be encoded against."""

    key: str
    sha256: str
    source_name: str


class ReferencePolicy:
    """Which stored reference a new delta is encoded against, and when references go.

    Policies use only DeltaStore's public methods; every delta they make is written by
    `DeltaStore.write_delta` (ratio check, metadata, PUT, the writer half of the delete
    protocol, the record)."""

    name = ""

    def put_delta(self, store, src: Path, logical_key: str, prefix: str, name: str, size: int,
                  sha: str, extra: dict[str, str]) -> ObjectRecord | None:  # fmt: skip
        """Store `src` as a delta (its record) or return None to store it direct."""
        raise NotImplementedError

    def release(self, store, prefix: str) -> None:
        """Called when a delta of `prefix` went away (delete or replaced by a direct file)."""


def encode_delta(store, ref: Candidate, ref_path: Path, src: Path, sha: str, delta: Path,
                 limit: int | None = None, name: str = "") -> dict[str, str] | None:  # fmt: skip
    """Encode `src` against the raw reference `ref` (local copy `ref_path`) into `delta`, as
    every policy should: an archive delta (core/archivedelta.py) when the setting is on and it
    is smaller, else the byte delta. Returns the metadata to pass to `DeltaStore.write_delta`
    as `transform` ({} for a byte delta); None when no delta fits in `limit` bytes."""
    return archivedelta.encode(store, ref_path, ref.sha256, src, sha, delta, limit, name)
