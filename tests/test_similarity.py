"""The similarity estimate (core/similarity.py) that skips hopeless xdelta3 runs."""

from __future__ import annotations

import os
import random

from core import similarity
from core.similarity import SimilarityIndex, fingerprints, shared_share

MiB = 2**20


def test_unrelated_random_files_share_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(4 * MiB))
    b.write_bytes(os.urandom(4 * MiB))
    fa, fb = fingerprints(a), fingerprints(b)
    assert len(fa) >= similarity.MIN_SAMPLES
    assert shared_share(fb, fa) == 0.0


def test_shifted_edited_copy_shares_most(tmp_path):
    """Content-defined: an insertion at the front and an edit in the middle keep most
    fingerprints (fixed offsets would lose them all)."""
    data = bytearray(random.Random(1).randbytes(4 * MiB))
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    data[2 * MiB : 2 * MiB + 100_000] = os.urandom(100_000)
    b.write_bytes(b"inserted" * 1000 + bytes(data))
    share = shared_share(fingerprints(b), fingerprints(a))
    assert share is not None and share > 0.9


def test_anchors_across_chunk_boundaries(tmp_path, monkeypatch):
    data = random.Random(2).randbytes(3 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    whole = fingerprints(path)
    monkeypatch.setattr(similarity, "CHUNK", 4093)  # many boundaries, odd size
    assert fingerprints(path) == whole


def test_no_estimate_for_text_or_small_files(tmp_path):
    text, small, ref = tmp_path / "t", tmp_path / "s", tmp_path / "r"
    text.write_bytes(b"def f():\n    return 1\n" * 200_000)
    small.write_bytes(os.urandom(64 * 1024))
    ref.write_bytes(os.urandom(MiB))
    assert shared_share(fingerprints(text), fingerprints(ref)) is None
    assert shared_share(fingerprints(small), fingerprints(ref)) is None
    index = SimilarityIndex()
    assert not index.hopeless(text, "r", ref, 0.5)
    assert not index.hopeless(small, "r", ref, 0.5)
    assert index.skipped == 0


def test_index_remembers_references(tmp_path):
    ref, target = tmp_path / "r", tmp_path / "t"
    ref.write_bytes(os.urandom(4 * MiB))
    target.write_bytes(os.urandom(4 * MiB))
    index = SimilarityIndex()
    assert index.hopeless(target, "sha-r", ref, 0.5)
    ref.unlink()  # the second estimate uses the fingerprints kept in memory
    assert index.hopeless(target, "sha-r", ref, 0.5)
    assert index.skipped == 2


def test_store_skips_the_encode_of_an_unrelated_file(deltastore, tmp_path, monkeypatch):
    """A random file against a random reference: stored direct without an xdelta3 run; a
    related version of the reference is still encoded and stored as a small delta."""
    from core import codec
    from core.layout import Kind
    from tests.datagen import random_bytes, version_series, write

    encodes = []
    real = codec.encode
    monkeypatch.setattr(codec, "encode", lambda *a, **k: encodes.append(a[1]) or real(*a, **k))
    first, related = version_series(2, 4 * MiB)
    deltastore.put(write(tmp_path / "a", first), "d/a.zip")  # the reference (self-delta)
    assert len(encodes) == 1
    unrelated = deltastore.put(write(tmp_path / "b", random_bytes(4 * MiB, 9)), "d/b.zip")
    assert unrelated.kind == Kind.DIRECT
    assert len(encodes) == 1 and deltastore.similarity.skipped == 1
    delta = deltastore.put(write(tmp_path / "c", related), "d/c.zip")
    assert delta.kind == Kind.DELTA and len(encodes) == 2
    assert delta.stored_size < 0.1 * delta.original_size
    out = tmp_path / "out"
    deltastore.get("d/b.zip", out)
    assert out.read_bytes() == random_bytes(4 * MiB, 9)


def test_estimate_used_with_archive_deltas_once_the_reference_is_no_archive(
    objectstore, tmp_path, monkeypatch
):
    """With archive deltas on, the estimate is skipped while the reference might have a
    canonical form; once it is known to have none (a binary), unrelated files skip the encode
    again, as with archive deltas off."""
    from core import codec
    from core.config import DeltaSettings
    from core.deltastore import DeltaStore
    from core.layout import Kind
    from tests.datagen import random_bytes, write

    encodes = []
    real = codec.encode
    monkeypatch.setattr(codec, "encode", lambda *a, **k: encodes.append(a[1]) or real(*a, **k))
    store = DeltaStore(objectstore, DeltaSettings(archive_deltas=True), workdir=tmp_path / "w")
    try:
        store.put(write(tmp_path / "a", random_bytes(4 * MiB, 1)), "d/a.whl")  # the reference
        assert len(encodes) == 1
        for n, seed in enumerate((2, 3), start=1):
            src = write(tmp_path / f"b{n}", random_bytes(4 * MiB, seed))
            record = store.put(src, f"d/b{n}.whl")
            assert record.kind == Kind.DIRECT
        # b1: byte delta tried (and the reference found to be no archive); b2: estimate only
        assert len(encodes) == 2 and store.similarity.skipped == 1
        out = tmp_path / "out"
        store.get("d/b2.whl", out)
        assert out.read_bytes() == random_bytes(4 * MiB, 3)
    finally:
        store.close()
