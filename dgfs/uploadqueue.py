"""Background uploads of the asynchronous write-back mode (`--write-back async`).

A closed file is submitted once; at most `workers` uploads run at a time (each one's encode,
check and PUT in a worker thread), in the order they were submitted. The nursery is the
mount's: at unmount it is left open until every submitted upload has finished.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from dgfs.inodes import Node

log = logging.getLogger("dgfs.fs")


class UploadQueue:
    """Files waiting for, or in, a background upload."""

    def __init__(self, workers: int) -> None:
        self.limiter = trio.CapacityLimiter(workers)
        self.nursery: trio.Nursery | None = None  # set by the mount while serving
        self.queued: set[Node] = set()
        self.active: set[Node] = set()
        self._first: dict[str, trio.Event] = {}  # deltaspace → its first upload's end

    def submit(self, node: Node, upload: Callable[[Node], Awaitable[None]]) -> None:
        """Run `upload(node)` in the background unless it is already waiting to start."""
        if node in self.queued:
            return
        if self.nursery is None:
            raise RuntimeError("upload queue used outside a serving mount")
        self.queued.add(node)
        self.nursery.start_soon(self._run, node, upload)

    async def _run(self, node: Node, upload: Callable[[Node], Awaitable[None]]) -> None:
        async with self.limiter:
            self.queued.discard(node)  # from here on a new change needs a new upload
            self.active.add(node)
            try:
                await upload(node)
            except Exception:  # the staged data stays dirty: the retry loop tries again
                log.exception("background upload of %s failed unexpectedly", node.path)
            finally:
                self.active.discard(node)

    @contextlib.asynccontextmanager
    async def first_in(self, space: str, has_reference: Callable[[], bool]) -> AsyncIterator[None]:
        """Run alone in a deltaspace whose reference this mount has not seen yet: its first
        upload may create `reference.bin`, and concurrent ones would race to create it (the
        losers sending their bytes for nothing, then fetching the winner's). Later uploads
        there wait for it."""
        while (first := self._first.get(space)) is not None:
            await first.wait()
        if has_reference():
            yield
            return
        first = self._first[space] = trio.Event()
        try:
            yield
        finally:
            del self._first[space]
            first.set()

    def busy(self, node: Node) -> bool:
        """Whether the file waits for or is in a background upload."""
        return node in self.queued or node in self.active

    def status(self) -> dict[str, int]:
        """How many uploads wait for a worker and how many run (`dgfs status`)."""
        return {"queued": len(self.queued), "running": len(self.active)}
