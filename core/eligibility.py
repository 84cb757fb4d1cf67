"""Delta-or-direct decisions (deltaglider's rule, made stricter and broader)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from core.config import DELTAGLIDER_EXTENSIONS, DeltaSettings

SNIFF_BYTES = 264  # covers the ustar magic at offset 257


def may_delta(settings: DeltaSettings, logical_key: str, size: int) -> bool:
    """Whether a file is worth trying as a delta at all.

    Default: any file of at least `min_delta_size` bytes and at most `max_delta_size`, not
    matching a no-delta pattern. Compat (`extensions_only`): deltaglider's extension list.
    """
    if size < settings.min_delta_size or size > settings.max_delta_size:
        return False
    if any(fnmatch.fnmatch(logical_key, p) for p in settings.no_delta_patterns):
        return False
    if settings.extensions_only:
        return logical_key.lower().endswith(DELTAGLIDER_EXTENSIONS)
    return True


def sniff(path: Path) -> bytes:
    """The leading bytes used by `looks_related`."""
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


def looks_related(candidate_head: bytes, reference_head: bytes, same_suffix: bool) -> bool:
    """Cheap pre-check before a full xdelta3 run: same file type by magic bytes or suffix.

    A JPEG against a zip reference is stored direct without encoding; two zips, two tars or
    two files with the same suffix are tried.
    """
    if same_suffix:
        return True
    if candidate_head[:4] and candidate_head[:4] == reference_head[:4]:
        return True
    return candidate_head[257:262] == b"ustar" and reference_head[257:262] == b"ustar"


def suffix_of(name: str) -> str:
    """Lowercased last suffix ('' when none)."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""
