"""Reference policies: which stored reference a new delta is encoded against.

- `deltaglider` (default, DeltagliderPolicy): one `reference.bin` per deltaspace, as
  deltaglider writes and reads it.
- `adaptive-compatible` (AdaptiveCompatiblePolicy): extra raw keyframes when deltas drift;
  every file is one decode and deltaglider reads all of them.
- `adaptive` (AdaptivePolicy): hidden references in xdelta3 streams (dgfs-only), at most two
  decodes per file.

Hidden references, their collector and decode depth: core/policies/hidden.py; stream links:
core/policies/stream.py.
"""

from __future__ import annotations

from core.config import REFERENCE_POLICIES
from core.policies.adaptive import AdaptivePolicy
from core.policies.base import MAX_DECODES, Candidate, ReferencePolicy, encode_delta
from core.policies.compatible import AdaptiveCompatiblePolicy
from core.policies.deltaglider import DeltagliderPolicy

POLICY_NAMES = REFERENCE_POLICIES
DEFAULT_POLICY = "deltaglider"
_POLICIES: dict[str, type[ReferencePolicy]] = {
    cls.name: cls for cls in (DeltagliderPolicy, AdaptiveCompatiblePolicy, AdaptivePolicy)
}

__all__ = [
    "MAX_DECODES",
    "POLICY_NAMES",
    "DEFAULT_POLICY",
    "AdaptiveCompatiblePolicy",
    "AdaptivePolicy",
    "Candidate",
    "DeltagliderPolicy",
    "ReferencePolicy",
    "encode_delta",
    "make_policy",
]


def make_policy(name: str | None) -> ReferencePolicy:
    """The policy called `name` (None/'' → deltaglider); ValueError for an unknown name."""
    name = (name or DEFAULT_POLICY).strip().lower()
    if name not in _POLICIES:
        raise ValueError(f"unknown reference policy {name!r} (one of {', '.join(POLICY_NAMES)})")
    return _POLICIES[name]()
