"""Worker threads for blocking calls (boto3, xdelta3, hashing, cache crypto) under one limit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import trio


class Threads:
    """Runs blocking calls in worker threads, at most `max_threads` at a time."""

    def __init__(self, max_threads: int) -> None:
        self.limiter = trio.CapacityLimiter(max_threads)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a worker thread; the trio loop waits without blocking."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )
