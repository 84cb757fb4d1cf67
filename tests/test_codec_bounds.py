"""xdelta3 decode is bounded: a delta may not expand past the size its metadata gives, nor run
for ever (hostile objects must not fill the cache disk or hang a read)."""

from __future__ import annotations

import hashlib
import os

import pytest

from core import codec, layout
from core.config import DeltaSettings
from core.deltastore import DeltaStore
from core.errors import CodecError, IntegrityError
from tests.datagen import random_bytes, write


def _bomb(tmp_path):
    """A reference and a tiny delta that decodes to 20 MB of zeros."""
    ref = write(tmp_path / "ref", random_bytes(4096, 1))
    big = write(tmp_path / "big", bytes(20_000_000))
    delta = tmp_path / "bomb.delta"
    codec.encode(ref, big, delta, hashlib.sha256(big.read_bytes()).hexdigest())
    return ref, delta


def test_decode_stops_past_the_expected_size(tmp_path):
    ref, delta = _bomb(tmp_path)
    assert delta.stat().st_size < 10_000
    with pytest.raises(codec.OutputTooLarge):
        codec.decode(ref, delta, tmp_path / "out", max_size=1_000_000)
    assert (tmp_path / "out").stat().st_size <= 1_000_000


def test_delta_claiming_a_small_size_reads_as_integrity_error(objectstore, tmp_path):
    store = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "w")
    ref_data = random_bytes(4096, 1)
    store.put(write(tmp_path / "a.bin", ref_data), "d/a.bin")  # becomes d/reference.bin
    ref, delta = _bomb(tmp_path)
    ref_sha = hashlib.sha256(ref_data).hexdigest()
    meta = layout.delta_metadata(
        "other/1", "b.bin", "0" * 64, 1000, "d/reference.bin", ref_sha, 100, False
    )
    objectstore.put_file("d/b.bin.delta", delta, layout.encode_metadata(meta))
    with pytest.raises(IntegrityError, match="exceeds the expected 1000 bytes"):
        store.get("d/b.bin", tmp_path / "out")
    store.close()


def test_decode_has_a_time_limit(tmp_path, monkeypatch):
    fake = write(tmp_path / "bin" / "xdelta3", b"#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(codec, "DECODE_SECONDS_MIN", 0.5)
    ref = write(tmp_path / "ref", b"x")
    with pytest.raises(CodecError, match="took longer"):
        codec.decode(ref, ref, tmp_path / "out", max_size=10)
