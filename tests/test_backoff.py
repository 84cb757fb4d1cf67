"""Backing off from delta attempts that keep failing: the rule, then a real store."""

from __future__ import annotations

import subprocess
import sys

from core.backoff import FAILURES_BEFORE_SKIP, MAX_GAP, DeltaBackoff
from core.layout import Kind
from tests.datagen import random_bytes, version_series, write


def _decisions(backoff: DeltaBackoff, files: int) -> list[bool]:
    """Try `files` files of one kind, every attempt failing; which ones were attempted."""
    tried = []
    for _ in range(files):
        attempt = backoff.should_try("d", "x.dat")
        tried.append(attempt)
        if attempt:
            backoff.record("d", "x.dat", paid=False)
    return tried


def test_gaps_grow_to_the_cap_and_reset_on_success():
    backoff = DeltaBackoff()
    tried = _decisions(backoff, 3 + 1 + 1 + 2 + 1 + 4 + 1)
    assert tried == [True] * 3 + [False, True] + [False] * 2 + [True] + [False] * 4 + [True]
    assert backoff.skipped == 7
    many = _decisions(backoff, 200)
    gaps = "".join("T" if t else "." for t in many).split("T")
    assert max(len(g) for g in gaps) == MAX_GAP
    backoff.record("d", "x.dat", paid=True)
    assert all(backoff.should_try("d", "x.dat") for _ in range(FAILURES_BEFORE_SKIP + 5))


def test_kinds_are_separate():
    backoff = DeltaBackoff()
    _decisions(backoff, FAILURES_BEFORE_SKIP)
    assert not backoff.should_try("d", "y.dat")  # same suffix, same deltaspace: in the gap
    assert backoff.should_try("d", "x.zip")
    assert backoff.should_try("other", "x.dat")


def test_store_skips_attempts_then_notices_a_related_file(deltastore, tmp_path):
    """Random files after the reference are stored direct; after FAILURES_BEFORE_SKIP of them
    one is stored direct without an attempt; the next related file is still a delta."""
    reference, related = version_series(2, 200_000, seed=3)
    deltastore.put(write(tmp_path / "r", reference), "s/v0.dat")
    kinds = []
    for i in range(FAILURES_BEFORE_SKIP + 1):
        src = write(tmp_path / f"n{i}", random_bytes(200_000, 100 + i))
        kinds.append(deltastore.put(src, f"s/noise{i}.dat").kind)
    assert kinds == [Kind.DIRECT] * (FAILURES_BEFORE_SKIP + 1)
    assert deltastore.backoff.skipped == 1
    record = deltastore.put(write(tmp_path / "v1", related), "s/v1.dat")
    assert record.kind == Kind.DELTA
    assert deltastore.get("s/noise3.dat", tmp_path / "out").original_size == 200_000
    assert (tmp_path / "out").read_bytes() == random_bytes(200_000, 103)


def test_mount_reports_skipped_attempts(mnt):
    """Random files through a real mount: every one reads back, and `dgfs status` counts the
    attempt the backoff saved (first file: the reference; 3 failures; the 5th is skipped)."""
    d = mnt.path / "noise"
    d.mkdir()
    blobs = {f"r{i}.dat": random_bytes(100_000, 500 + i) for i in range(6)}
    for name, data in blobs.items():
        (d / name).write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-m", "dgfs.cli", "status", str(mnt.path)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "delta attempts skipped (recent ones stored direct): 1" in out, out
    assert {p.name: p.read_bytes() for p in d.iterdir()} == blobs
