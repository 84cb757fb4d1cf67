"""The order in which deflate parameters are tried on a stream ("divination").

Most streams in one archive come from one encoder: the parameters that reproduced the last
stream are tried first, then the common ones (zlib level 6, then 9), then the rest. A file
whose streams keep matching nothing stops paying for full searches after a few: then only
parameters that worked in this file are tried (the common ones if none has yet). A failed
trial costs re-deflating up to the first block that differs (~250 KB of JSON at level 6).
"""

from __future__ import annotations

from core.archive.zpin import Params

# Level 0 is left out: its stored blocks depend on how input is split between deflate() calls,
# and a stored stream is already as good as inflated for xdelta3.
_LEVELS = (6, 9, 1, 2, 3, 4, 5, 7, 8)
CANDIDATES: tuple[Params, ...] = tuple(Params(lvl, mem) for mem in (8, 9) for lvl in _LEVELS)
COMMON: tuple[Params, ...] = (Params(6, 8), Params(9, 8))
FRUITLESS_SEARCHES = 2  # full searches that found nothing before only known parameters are tried


class Diviner:
    """Candidate parameters for the next stream of one file, learning from the previous ones."""

    def __init__(self) -> None:
        self._worked: list[Params] = []  # most recent success first
        self._fruitless = 0

    def candidates(self) -> list[Params]:
        """Parameters to try, most likely first."""
        if self._fruitless < FRUITLESS_SEARCHES:
            return self._worked + [p for p in CANDIDATES if p not in self._worked]
        return list(self._worked or COMMON)

    def worked(self, params: Params) -> None:
        """`params` reproduced a stream: try them first next time."""
        if params in self._worked:
            self._worked.remove(params)
        self._worked.insert(0, params)

    def failed(self) -> None:
        """No candidate reproduced a stream."""
        self._fruitless += 1
