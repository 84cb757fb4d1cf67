"""Inode table: stable inode numbers for paths, kernel lookup counts, per-node state."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from core.layout import ObjectRecord, PosixAttrs


@dataclass(eq=False)
class Node:
    """One file, directory or symlink the kernel knows about.

    `path` is relative to the mount root ('' for the root); None once unlinked while open.
    A file with `staging` has its current content in that local file; `dirty` means that
    content (or `pending` attributes) is not yet in S3.
    """

    ino: int
    path: str | None
    is_dir: bool
    record: ObjectRecord | None = None
    dir_attrs: PosixAttrs = field(default_factory=PosixAttrs)
    dir_attrs_loaded: bool = False
    touched_ns: int = 0  # a directory's last entry change by this mount (its mtime, ctime)
    staging: Path | None = None
    fd: int = -1
    dirty: bool = False
    attrs_dirty: bool = False
    attrs_since: float = 0.0  # monotonic time of the first unsaved attribute change
    pending: PosixAttrs | None = None
    xattrs: dict[str, bytes] | None = None  # unsaved user xattrs of a file being written
    lookups: int = 0
    open_handles: int = 0
    writers: int = 0
    upload_error: int | None = None
    defer_until: float = 0.0  # monotonic deadline of a closed temp file awaiting its rename
    created_excl: bool = False  # created with O_EXCL (as rsync's mkstemp creates temp files)
    page_cache_of: tuple | None = None  # content the kernel's page cache holds (fs.py: open)
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def is_symlink(self) -> bool:
        return self.record is not None and self.record.is_symlink


class InodeTable:
    """path ⇄ inode, kept while the kernel holds a lookup or a handle is open."""

    def __init__(self) -> None:
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)
        root = Node(pyfuse3.ROOT_INODE, "", True, lookups=1)
        self._by_ino: dict[int, Node] = {root.ino: root}
        self._by_path: dict[str, Node] = {"": root}

    def __getitem__(self, ino: int) -> Node:
        return self._by_ino[ino]

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def node_for(self, path: str, is_dir: bool) -> Node:
        """The node of `path`, created if new (a file that became a dir gets a new node)."""
        node = self._by_path.get(path)
        if node is not None and node.is_dir == is_dir:
            return node
        if node is not None:
            self.detach(node)
        node = Node(next(self._next), path, is_dir)
        self._by_ino[node.ino] = node
        self._by_path[path] = node
        return node

    def detach(self, node: Node) -> None:
        """Unlink a node from its path (it lives on while looked up or open)."""
        if node.path is not None and self._by_path.get(node.path) is node:
            del self._by_path[node.path]
        node.path = None
        self._drop_if_unused(node)

    def move(self, node: Node, new_path: str) -> None:
        """Rename a node and, for a directory, every known node below it."""
        target = self._by_path.get(new_path)
        if target is not None and target is not node:
            self.detach(target)
        old = node.path
        if old is not None:
            self._by_path.pop(old, None)
        node.path = new_path
        self._by_path[new_path] = node
        if node.is_dir and old is not None:
            prefix = old + "/"
            for path, child in list(self._by_path.items()):
                if path.startswith(prefix):
                    del self._by_path[path]
                    child.path = new_path + "/" + path[len(prefix) :]
                    self._by_path[child.path] = child

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == pyfuse3.ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        busy = node.lookups or node.open_handles or node.dirty or node.attrs_dirty
        if busy or node.ino == pyfuse3.ROOT_INODE:
            return
        self._by_ino.pop(node.ino, None)
        if node.path is not None and self._by_path.get(node.path) is node:
            del self._by_path[node.path]

    def release(self, node: Node) -> None:
        """Called when the last handle closes: drop the node if the kernel forgot it."""
        self._drop_if_unused(node)

    def nodes_below(self, path: str) -> list[Node]:
        """Known nodes strictly below directory `path`."""
        prefix = path + "/" if path else ""
        return [n for p, n in self._by_path.items() if p.startswith(prefix) and p != path]

    def dirty_nodes(self) -> list[Node]:
        return [n for n in self._by_ino.values() if n.dirty]

    def attr_pending_nodes(self) -> list[Node]:
        return [n for n in self._by_ino.values() if n.attrs_dirty and not n.dirty]
