"""The interface every reference policy implements, and what they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
