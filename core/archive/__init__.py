"""Archive canonical forms (issue #14): zip and gzip containers with their reproducible
deflate streams inflated, so that xdelta3 sees what changed inside them.

canonicalize() writes the form (or returns None: store the file as it is); rebuild() gives
the original bytes back, re-deflating with the pinned zlib (core.archive.zpin).
"""

from core.archive.canonical import Canonical, canonicalize
from core.archive.limits import DEFAULT_LIMITS, Limits
from core.archive.memo import Memo
from core.archive.rebuild import rebuild, rebuilt_sha256
from core.errors import ArchiveError

__all__ = [
    "DEFAULT_LIMITS",
    "ArchiveError",
    "Canonical",
    "Limits",
    "Memo",
    "canonicalize",
    "rebuild",
    "rebuilt_sha256",
]
