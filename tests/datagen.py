"""Deterministic test data: version series, random files."""

from __future__ import annotations

import random
from pathlib import Path


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def version_series(count: int, size: int, seed: int = 1) -> list[bytes]:
    """`count` versions of one artefact: each changes a few small regions of the previous."""
    rng = random.Random(seed)
    current = bytearray(rng.randbytes(size))
    versions = [bytes(current)]
    for _ in range(count - 1):
        for _ in range(4):
            at = rng.randrange(0, max(1, size - 600))
            current[at : at + 500] = rng.randbytes(500)
        versions.append(bytes(current))
    return versions


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
