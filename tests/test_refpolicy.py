"""Reference policies: adaptive chains and adaptive-compatible keyframes round-trip, survive
deletes in any order, mix with deltaglider in one deltaspace, and respect the decode bound."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core import layout
from core.cache import CacheSettings, ContentCache
from core.config import ConfigError, DeltaSettings, delta_settings_from_env
from core.deltastore import DeltaStore
from core.errors import IntegrityError
from core.layout import Kind
from core.policies import (
    MAX_DECODES,
    AdaptiveCompatiblePolicy,
    AdaptivePolicy,
    DeltagliderPolicy,
    make_policy,
)
from core.policies.hidden import (
    collect_keyframes,
    is_keyframe_key,
    keyframe_base,
    reconstruct_depth,
)
from tests.datagen import random_bytes, write

SIZE = 64 * 1024


def drifting_series(count: int, seed: int) -> list[bytes]:
    """Versions that drift: each rewrites ~6% of the previous, so late ones share little with
    the first (a fixed reference degrades, the previous version stays close)."""
    rng = random.Random(seed + 10_000)
    current = bytearray(random_bytes(SIZE, seed))
    out = [bytes(current)]
    for _ in range(count - 1):
        for _ in range(4):
            at = rng.randrange(0, SIZE - 1024)
            current[at : at + 1000] = rng.randbytes(1000)
        out.append(bytes(current))
    return out


def adaptive_store(objectstore, tmp_path: Path, name: str = "adaptive", cache=None,
                   **kw) -> DeltaStore:  # fmt: skip
    """A store under `name` (adaptive or adaptive-compatible), `kw` tuning its policy."""
    policy = None
    if kw:
        policy = AdaptivePolicy(**kw) if name == "adaptive" else AdaptiveCompatiblePolicy(**kw)
    return DeltaStore(
        objectstore,
        DeltaSettings(reference_policy=name),
        cache=cache,
        workdir=tmp_path / f"work-{name}",
        policy=policy,
    )


def live_hidden(store: DeltaStore, keys) -> set[str]:
    """Hidden references the files `keys` need: their references and chain ancestors."""
    live = set()
    for key in keys:
        ref = store.stat(key).ref_key
        while ref and is_keyframe_key(ref):
            live.add(ref)
            parent = layout.chain_parent(store.head_record(ref).metadata)
            ref = parent[0] if parent else None
    return live


def keyframes(store: DeltaStore, prefix: str) -> list[str]:
    base = keyframe_base(prefix)
    return [o.key for p in store.store.list_pages(base, None) for o in p.objects]


def check_all(store: DeltaStore, expected: dict[str, bytes], tmp_path: Path) -> None:
    listed = {r.logical_key for r in store.list("rel")}
    assert listed == set(expected)
    for key, data in expected.items():
        rec = store.stat(key)
        out = tmp_path / "out"
        store.get(key, out, rec)
        assert out.read_bytes() == data, key
        assert reconstruct_depth(store, rec) <= MAX_DECODES
        if rec.kind == Kind.DELTA and rec.metadata.get(layout.META_POLICY) != "adaptive":
            assert reconstruct_depth(store, rec) == 1  # compatible and deltaglider: depth 1


def test_settings_and_factory():
    assert DeltaSettings().reference_policy == "deltaglider"
    env = {"DG_REFERENCE_POLICY": "Adaptive"}
    assert delta_settings_from_env(env).reference_policy == "adaptive"
    assert delta_settings_from_env({}, reference_policy="adaptive-compatible").reference_policy
    with pytest.raises(ConfigError):
        delta_settings_from_env({"DG_REFERENCE_POLICY": "chains"})
    assert isinstance(make_policy(None), DeltagliderPolicy)
    assert isinstance(make_policy("adaptive"), AdaptivePolicy)
    assert isinstance(make_policy("adaptive-compatible"), AdaptiveCompatiblePolicy)
    with pytest.raises(ValueError):
        make_policy("nope")
    assert is_keyframe_key("a/.dgfs/refs/x/reference.bin")
    assert not is_keyframe_key("a/reference.bin")


def test_default_store_uses_deltaglider_policy(deltastore):
    assert isinstance(deltastore.policy, DeltagliderPolicy)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adaptive_shuffled_round_trip(objectstore, tmp_path, seed):
    store = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(12, seed)
    order = list(range(len(versions)))
    random.Random(seed).shuffle(order)
    expected = {}
    for i in order:
        key = f"rel/app-{i:02d}.zip"
        rec = store.put(write(tmp_path / "src" / f"{i}", versions[i]), key)
        assert rec.kind == Kind.DELTA
        expected[key] = versions[i]
    check_all(store, expected, tmp_path)
    # every delta points at reference.bin or a hidden keyframe, never at a user file
    for rec in store.list("rel"):
        assert rec.ref_key == "rel/reference.bin" or is_keyframe_key(rec.ref_key)
    # hidden: keyframes never show up as files or directories
    assert set(store.list_dir("rel").files) == {k.split("/")[-1] for k in expected}
    assert not store.list_dir("rel").dirs
    store.close()


def test_adaptive_stores_less_than_deltaglider_on_drift(bucket, s3_settings, tmp_path):
    from core.objectstore import ObjectStore

    versions = drifting_series(16, 7)
    sizes = {}
    for name in ("deltaglider", "adaptive"):
        os_ = ObjectStore(bucket, s3_settings)
        store = DeltaStore(os_, DeltaSettings(reference_policy=name), workdir=tmp_path / name)
        for i, data in enumerate(versions):
            store.put(write(tmp_path / name / f"{i}", data), f"{name}/v{i:02d}.bin")
        sizes[name] = sum(o.size for p in os_.list_pages(f"{name}/", None) for o in p.objects)
        store.close()
    assert keyframes(store, "adaptive")
    assert sizes["adaptive"] < sizes["deltaglider"]


@pytest.mark.parametrize(
    "name, seed", [("adaptive", 4), ("adaptive", 5), ("adaptive", 6), ("adaptive-compatible", 4)]
)
def test_adaptive_random_deletes_keep_everything_readable(objectstore, tmp_path, name, seed):
    store = adaptive_store(objectstore, tmp_path, name, threshold=0.1)
    versions = drifting_series(12, seed)
    expected = {}
    for i, data in enumerate(versions):
        key = f"rel/v{i:02d}.tar"
        store.put(write(tmp_path / "src" / f"{i}", data), key)
        expected[key] = data
    assert len(keyframes(store, "rel")) >= 2
    order = list(expected)
    random.Random(seed).shuffle(order)
    for key in order:
        store.delete(store.stat(key))
        del expected[key]
        check_all(store, expected, tmp_path)
        # no hidden reference outlives the last file that needs it
        assert set(keyframes(store, "rel")) == live_hidden(store, expected)
    assert keyframes(store, "rel") == []
    assert [o.key for p in objectstore.list_pages("rel/", None) for o in p.objects] == []
    store.close()


def test_overwrite_releases_keyframe(objectstore, tmp_path):
    store = adaptive_store(objectstore, tmp_path, "adaptive-compatible", threshold=0.01)
    a, b = drifting_series(2, 9)
    store.put(write(tmp_path / "a", a), "rel/base.bin")
    store.put(write(tmp_path / "b", b), "rel/x.bin")  # drifted: becomes a keyframe
    assert len(keyframes(store, "rel")) == 1
    store.put(write(tmp_path / "a2", a), "rel/x.bin")  # same bytes as reference.bin
    assert keyframes(store, "rel") == []
    check_all(store, {"rel/base.bin": a, "rel/x.bin": a}, tmp_path)
    store.close()


def test_overwrite_releases_chain_reference(objectstore, tmp_path):
    store = adaptive_store(objectstore, tmp_path)
    a, b = drifting_series(2, 9)
    store.put(write(tmp_path / "a", a), "rel/base.bin")
    store.put(write(tmp_path / "b", b), "rel/x.bin")  # a chain link on a's hidden reference
    assert len(keyframes(store, "rel")) == 2
    store.put(write(tmp_path / "a2", a), "rel/x.bin")  # same bytes: reuses a's reference
    assert keyframes(store, "rel") == [store.stat("rel/base.bin").ref_key]
    check_all(store, {"rel/base.bin": a, "rel/x.bin": a}, tmp_path)
    store.close()


def test_mixed_policies_in_one_deltaspace(objectstore, tmp_path):
    plain = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "w1")
    chain = adaptive_store(objectstore, tmp_path, threshold=0.5)
    compatible = adaptive_store(objectstore, tmp_path, "adaptive-compatible", threshold=0.1)
    stores = (plain, chain, compatible)
    versions = drifting_series(15, 11)
    expected = {}
    for i, data in enumerate(versions):
        key = f"rel/m{i:02d}.zip"
        stores[i % 3].put(write(tmp_path / "src" / f"{i}", data), key)
        expected[key] = data
    assert keyframes(chain, "rel")
    for store in stores:
        check_all(store, expected, tmp_path)
    from core.stats import deltaspace_stats

    policies = deltaspace_stats(plain, "rel").policies  # deltaglider may store some direct
    assert policies["adaptive"] == policies["adaptive-compatible"] == 5
    assert 1 <= policies["deltaglider"] <= 5
    order = list(expected)
    random.Random(3).shuffle(order)
    for n, key in enumerate(order):
        stores[n % 3].delete(plain.stat(key))
        del expected[key]
        check_all(plain, expected, tmp_path)
        assert live_hidden(plain, expected) <= set(keyframes(plain, "rel"))
    collect_keyframes(chain, "rel")  # a deltaglider-policy store does not sweep keyframes
    assert [o.key for p in objectstore.list_pages("rel/", None) for o in p.objects] == []
    for store in stores:
        store.close()


def test_keyframes_are_readable_as_deltaglider_layout(objectstore, tmp_path):
    """Every adaptive delta is depth 1 against `dirname(dg-ref-key)/reference.bin`, with the
    sha256 fields deltaglider checks."""
    store = adaptive_store(objectstore, tmp_path, "adaptive-compatible", threshold=0.1)
    for i, data in enumerate(drifting_series(8, 13)):
        store.put(write(tmp_path / "src" / f"{i}", data), f"rel/c{i}.zip")
    assert keyframes(store, "rel")
    for rec in store.list("rel"):
        ref_key = rec.metadata["dg-ref-key"]
        base = layout.reference_for_ref_key(ref_key)
        assert base == ref_key
        ref = store.head_record(base)
        assert ref.kind == Kind.DIRECT and ref.sha256 == rec.metadata["dg-ref-sha256"]
        assert ref.metadata.get("dg-note") == "reference"
    store.close()


@pytest.mark.parametrize("name", ["adaptive", "adaptive-compatible"])
def test_rename_prefix_moves_keyframes(objectstore, tmp_path, name):
    store = adaptive_store(objectstore, tmp_path, name, threshold=0.1)
    versions = drifting_series(6, 17)
    for i, data in enumerate(versions):
        store.put(write(tmp_path / "src" / f"{i}", data), f"old/r{i}.zip")
    store.rename_prefix("old", "rel", 1000)
    check_all(store, {f"rel/r{i}.zip": d for i, d in enumerate(versions)}, tmp_path)
    store.close()


@pytest.mark.parametrize("name", ["adaptive", "adaptive-compatible"])
def test_stats_count_keyframes_in_the_deltaspace_they_serve(objectstore, tmp_path, name):
    from core.stats import bucket_stats, deltaspace_stats, format_xattrs

    store = adaptive_store(objectstore, tmp_path, name, threshold=0.1)
    for i, data in enumerate(drifting_series(6, seed=3)):
        store.put(write(tmp_path / f"v{i}", data), f"rel/v{i}.bin")
    frames = keyframes(store, "rel")
    assert frames
    all_objects = [o for p in objectstore.list_pages("rel/", None) for o in p.objects]
    stored = sum(o.size for o in all_objects if not o.key.endswith("/"))
    one_level = deltaspace_stats(store, "rel")
    assert one_level.stored_bytes == stored
    assert one_level.file_count == 6
    total = bucket_stats(store)
    assert total.total.stored_bytes == stored
    assert set(total.deltaspaces) == {"rel"}  # keyframes are not deltaspaces of their own
    assert one_level.policy == total.total.policy == name
    assert format_xattrs(one_level)["user.dg.dir.policy"] == name
    assert total.to_json()["policies"] == {name: 6}
    store.close()


def test_stream_reads_in_two_decodes(objectstore, tmp_path, monkeypatch):
    """A long drifting series: one stream, every file a zero-diff self-delta against its own
    hidden reference, and a cold read of any file is one decode (its link's) whatever its
    position in the stream."""
    from core import codec

    store = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(30, 21)
    expected = {}
    for i, data in enumerate(versions):
        key = f"rel/s{i:02d}.zip"
        store.put(write(tmp_path / "src" / f"{i}", data), key)
        expected[key] = data
    check_all(store, expected, tmp_path)
    records = [store.stat(k) for k in expected]
    assert [reconstruct_depth(store, r) for r in records] == [1] + [2] * 29
    assert all(is_keyframe_key(r.ref_key) and r.ref_sha256 == r.sha256 for r in records)
    links = [store.head_record(k) for k in keyframes(store, "rel")]
    assert len(links) == 30
    assert sum(layout.chain_parent(r.metadata) is None for r in links) == 1
    assert all(layout.is_stream_link(r.metadata) for r in links if layout.chain_parent(r.metadata))
    total = sum(o.size for p in objectstore.list_pages("rel/", None) for o in p.objects)
    assert total < 0.5 * sum(map(len, versions))
    decodes = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda *a: (decodes.append(a), real(*a))[1])
    for n, (key, data) in enumerate(expected.items()):
        decodes.clear()
        store.get(key, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data
        assert len(decodes) == (0 if n == 0 else 1)
    store.close()


def test_stream_length_is_bounded(objectstore, tmp_path, monkeypatch):
    """A full stream starts a new root; a reader refuses a stream longer than the bound."""
    from core.policies import stream

    monkeypatch.setattr(stream, "MAX_STREAM_LINKS", 4)
    store = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(12, 22)
    for i, data in enumerate(versions):
        store.put(write(tmp_path / "src" / f"{i}", data), f"rel/b{i:02d}.zip")
    check_all(store, {f"rel/b{i:02d}.zip": d for i, d in enumerate(versions)}, tmp_path)
    links = [store.head_record(k) for k in keyframes(store, "rel")]
    assert sum(layout.chain_parent(r.metadata) is None for r in links) == 3  # 1+4, 1+4, 1+1
    monkeypatch.setattr(stream, "MAX_STREAM_LINKS", 2)
    with pytest.raises(IntegrityError, match="longer than"):
        store.get("rel/b04.zip", tmp_path / "out")
    store.close()


def test_stream_corrupted_body_is_refused(objectstore, tmp_path):
    """A link body replaced by other bytes is an error naming the key, for the link itself
    and for every later link whose source it is part of: never wrong bytes."""
    store = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(4, 24)
    for i, data in enumerate(versions):
        store.put(write(tmp_path / "src" / f"{i}", data), f"rel/k{i}.zip")
    link = store.stat("rel/k1.zip").ref_key
    rec = store.head_record(link)
    assert layout.is_stream_link(rec.metadata)
    body = tmp_path / "body"
    with body.open("wb") as f:
        objectstore.download(link, f)
    damaged = bytearray(body.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    body.write_bytes(bytes(damaged))
    objectstore.put_file(link, body, layout.encode_metadata(rec.metadata))
    for key in ("rel/k1.zip", "rel/k2.zip", "rel/k3.zip"):
        with pytest.raises(IntegrityError, match=link):
            store.get(key, tmp_path / "out")
    store.get("rel/k0.zip", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == versions[0]
    store.close()


def test_stream_cycle_is_refused(objectstore, tmp_path):
    """Links whose parents point at each other (damaged or crafted metadata) are an integrity
    error, never an endless walk."""
    store = adaptive_store(objectstore, tmp_path)
    for i, data in enumerate(drifting_series(3, 30)):
        store.put(write(tmp_path / "src" / f"{i}", data), f"rel/y{i}.zip")
    first, second = (store.head_record(store.stat(f"rel/y{i}.zip").ref_key) for i in (1, 2))
    meta = {
        **first.metadata,
        layout.META_CHAIN_PARENT: second.stored_key,
        layout.META_CHAIN_PARENT_SHA: second.sha256,
    }
    objectstore.copy(first.stored_key, first.stored_key, layout.encode_metadata(meta))
    reader = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "r")  # nothing memoised
    with pytest.raises(IntegrityError, match="cycle"):
        reader.get("rel/y2.zip", tmp_path / "out")
    reader.close()
    store.close()


def test_stream_link_holding_its_roots_content_reads_through_cache(objectstore, tmp_path):
    """A link whose content is also its stream's root (the root was past the `scan` newest
    references): reading it through the cache fetches that root uncached instead of waiting
    on the cache entry being filled."""
    cache = ContentCache(CacheSettings(cache_dir=tmp_path / "cache"))
    store = adaptive_store(objectstore, tmp_path, scan=1)
    v0, v1 = drifting_series(2, 28)
    for name, data in (("a", v0), ("b", v1), ("c", v0)):
        store.put(write(tmp_path / "src" / name, data), f"rel/{name}.zip")
    link = store.head_record(store.stat("rel/c.zip").ref_key)
    assert layout.is_stream_link(link.metadata)
    reader = DeltaStore(objectstore, DeltaSettings(), cache=cache, workdir=tmp_path / "r")
    with reader.reader.open_cached(reader.stat("rel/c.zip")) as entry:
        entry.copy_to(tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == v0
    reader.close()
    store.close()
    cache.close()


def test_forked_stream_reads_back_both(objectstore, tmp_path, monkeypatch):
    """Two writers extending the same tip (each unaware of the other's link) fork the stream:
    both links read, later files extend one branch, and deletes keep the rest readable."""
    import core.policies.adaptive as adaptive

    versions = drifting_series(6, 26)
    first = adaptive_store(objectstore, tmp_path / "a")
    second = adaptive_store(objectstore, tmp_path / "b")
    expected = {}
    for i in range(3):
        expected[f"rel/f{i}.zip"] = versions[i]
        first.put(write(tmp_path / "src" / f"{i}", versions[i]), f"rel/f{i}.zip")
    tip = first.stat("rel/f1.zip").ref_key
    other_branch = first.stat("rel/f2.zip").ref_key
    real = adaptive.hidden_reference_keys
    monkeypatch.setattr(
        adaptive, "hidden_reference_keys", lambda *a: [k for k in real(*a) if k != other_branch]
    )
    second.put(write(tmp_path / "src" / "3", versions[3]), "rel/f3.zip")
    monkeypatch.setattr(adaptive, "hidden_reference_keys", real)
    expected["rel/f3.zip"] = versions[3]
    parents = {
        layout.chain_parent(first.head_record(first.stat(k).ref_key).metadata)[0]
        for k in ("rel/f2.zip", "rel/f3.zip")
    }
    assert parents == {tip}
    for i in (4, 5):
        second.put(write(tmp_path / "src" / f"{i}", versions[i]), f"rel/f{i}.zip")
        expected[f"rel/f{i}.zip"] = versions[i]
    check_all(first, expected, tmp_path)
    for key in ("rel/f2.zip", "rel/f1.zip", "rel/f4.zip"):
        first.delete(first.stat(key))
        del expected[key]
        check_all(second, expected, tmp_path)
        assert set(keyframes(first, "rel")) == live_hidden(first, expected)
    first.close()
    second.close()


def write_legacy_chain(store: DeltaStore, versions: list[bytes], tmp_path: Path) -> None:
    """`rel/old{i}.zip` as the previous adaptive version wrote them: a raw root, then hidden
    references that are deltas against their parent's decoded content (no stream mode), each
    file a zero-diff self-delta against its own."""
    import hashlib

    from core import codec

    parent = None
    for i, data in enumerate(versions):
        sha = hashlib.sha256(data).hexdigest()
        key = f"{keyframe_base('rel')}{i + 1:016x}-{sha[:16]}/{layout.REFERENCE_NAME}"
        src = write(tmp_path / "legacy" / f"{i}", data)
        meta, body = layout.reference_metadata("dgfs/0.1", f"old{i}.zip", sha), src
        meta[layout.META_CHAIN_DEPTH] = str(i)
        if parent is not None:
            body = tmp_path / "legacy" / f"{i}.link"
            codec.encode(parent[2], src, body, sha)
            meta[layout.META_CHAIN_PARENT], meta[layout.META_CHAIN_PARENT_SHA] = parent[:2]
        store.store.put_file(key, body, layout.encode_metadata(meta))
        delta = tmp_path / "legacy" / f"{i}.delta"
        size = codec.encode(src, src, delta, sha)
        meta = layout.delta_metadata("dgfs/0.1", f"old{i}.zip", sha, len(data), key, sha, size,
                                     True)  # fmt: skip
        meta[layout.META_POLICY] = "adaptive"
        store.store.put_file(f"rel/old{i}.zip.delta", delta, layout.encode_metadata(meta))
        parent = (key, sha, src)


def test_legacy_chain_still_reads(objectstore, tmp_path):
    """Chains written by the previous adaptive version (links decoded against their parent's
    content) read up to the decode bound and are refused past it; new files never extend
    them, and deleting everything collects them."""
    store = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(7, 23)
    write_legacy_chain(store, versions[:5], tmp_path)
    expected = {f"rel/old{i}.zip": versions[i] for i in range(4)}
    rec = store.stat("rel/old4.zip")
    assert reconstruct_depth(store, rec) > MAX_DECODES
    with pytest.raises(IntegrityError, match="deeper than"):
        store.get("rel/old4.zip", tmp_path / "out", rec)
    store.delete(rec)
    check_all(store, expected, tmp_path)
    assert reconstruct_depth(store, store.stat("rel/old3.zip")) == MAX_DECODES
    for i in (5, 6):
        store.put(write(tmp_path / "src" / f"{i}", versions[i]), f"rel/new{i}.zip")
        expected[f"rel/new{i}.zip"] = versions[i]
    check_all(store, expected, tmp_path)
    for i in (5, 6):
        ref = store.head_record(store.stat(f"rel/new{i}.zip").ref_key)
        assert layout.chain_parent(ref.metadata) is None or layout.is_stream_link(ref.metadata)
        assert reconstruct_depth(store, store.stat(f"rel/new{i}.zip")) <= 2
    for key in list(expected):
        store.delete(store.stat(key))
    assert [o.key for p in objectstore.list_pages("rel/", None) for o in p.objects] == []
    store.close()


def test_chain_read_through_cache_decodes_once_per_link(objectstore, tmp_path, monkeypatch):
    """Reading a series in order through the cache: every hidden reference a file needs holds
    an earlier version, already cached by its sha256, so at most one decode per file, whatever
    the chain depth (none for a file stored as a raw root)."""
    from core import codec

    cache = ContentCache(CacheSettings(cache_dir=tmp_path / "cache"))
    writer = adaptive_store(objectstore, tmp_path)
    versions = drifting_series(6, 25)
    for i, data in enumerate(versions):
        writer.put(write(tmp_path / "src" / f"{i}", data), f"rel/c{i}.zip")
    writer.close()
    reader = DeltaStore(objectstore, DeltaSettings(), cache=cache, workdir=tmp_path / "r")
    decodes = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda *a: (decodes.append(a), real(*a))[1])
    for i, data in enumerate(versions):
        decodes.clear()
        with reader.reader.open_cached(reader.stat(f"rel/c{i}.zip")) as entry:
            entry.copy_to(tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data
        rec = reader.stat(f"rel/c{i}.zip")
        raw_root = reconstruct_depth(reader, rec) == 1 and rec.ref_sha256 == rec.sha256
        assert len(decodes) == (0 if raw_root else 1)
    reader.close()
    cache.close()


def test_chain_writer_restores_a_parent_collected_during_its_put(objectstore, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """Writer half of the delete protocol: a collector removes the (then unused) stream
    between the writer's encode and its PUT; the writer puts it back from its copies, with
    their stored bytes and metadata."""
    store = adaptive_store(objectstore, tmp_path)
    other = adaptive_store(objectstore, tmp_path, "adaptive", threshold=0.9)
    v0, v1, v2 = drifting_series(3, 27)
    store.put(write(tmp_path / "a", v0), "rel/a.zip")
    store.put(write(tmp_path / "b", v1), "rel/b.zip")
    for key in ("rel/a.zip.delta", "rel/b.zip.delta"):
        objectstore.delete(key)  # files gone without a sweep: their references are unused
    parents = keyframes(store, "rel")
    real = AdaptivePolicy._write_node
    swept = []

    def write_node_after_sweep(self, *args):
        swept.extend(collect_keyframes(other, "rel"))
        return real(self, *args)

    monkeypatch.setattr(AdaptivePolicy, "_write_node", write_node_after_sweep)
    rec = store.put(write(tmp_path / "c", v2), "rel/c.zip")
    assert set(swept) == set(parents)
    parent = layout.chain_parent(store.head_record(rec.ref_key).metadata)
    assert parent is not None and parent[0] in parents  # a link on a swept reference...
    assert store.head_record(parent[0]).sha256 == parent[1]  # ...which the writer restored
    check_all(store, {"rel/c.zip": v2}, tmp_path)
    store.close()
    other.close()


def test_chain_collector_restores_links_a_delta_appeared_on(objectstore, tmp_path, monkeypatch):
    """Collector half: a delta lands on a link between the collector's delete and its re-list;
    the link and its parent are put back (parent first) and the file reads."""
    import core.policies.hidden as hidden

    store = adaptive_store(objectstore, tmp_path)
    v0, v1 = drifting_series(2, 29)
    store.put(write(tmp_path / "a", v0), "rel/a.zip")
    store.put(write(tmp_path / "b", v1), "rel/b.zip")
    assert reconstruct_depth(store, store.stat("rel/b.zip")) == 2
    saved = tmp_path / "b.delta"
    with saved.open("wb") as f:
        info, _ = objectstore.download("rel/b.zip.delta", f)
    for key in ("rel/a.zip.delta", "rel/b.zip.delta"):
        objectstore.delete(key)
    real, calls = hidden._used_refs, []

    def used_refs_with_late_writer(*args):
        calls.append(1)
        if len(calls) == 2:  # after the delete, before the re-list
            objectstore.put_file("rel/b.zip.delta", saved, info.metadata)
        return real(*args)

    monkeypatch.setattr(hidden, "_used_refs", used_refs_with_late_writer)
    removed = collect_keyframes(store, "rel")
    assert removed == []
    check_all(store, {"rel/b.zip": v1}, tmp_path)
    store.close()


def test_stats_report_orphaned_links_and_missing_chain_parents(objectstore, tmp_path):
    from core.stats import bucket_stats, remove_orphans

    store = adaptive_store(objectstore, tmp_path)
    v0, v1, v2 = drifting_series(3, 31)
    for name, data in (("a", v0), ("b", v1), ("c", v2)):
        store.put(write(tmp_path / name, data), f"rel/{name}.zip")
    assert bucket_stats(store).orphaned_references == {}
    c_ref = store.stat("rel/c.zip").ref_key
    objectstore.delete("rel/c.zip.delta")  # no sweep: c's link (if it has one) is orphaned
    chain_of_b = live_hidden(store, ["rel/a.zip", "rel/b.zip"])
    orphans = bucket_stats(store).orphaned_references
    assert set(orphans) == {c_ref} - chain_of_b
    assert remove_orphans(store, orphans) == sorted(orphans)
    assert set(keyframes(store, "rel")) == chain_of_b
    b_link = store.stat("rel/b.zip").ref_key
    parent = layout.chain_parent(store.head_record(b_link).metadata)
    assert parent is not None
    objectstore.delete(parent[0])  # damage: b's link lost its parent
    missing = bucket_stats(store).missing_references
    assert missing["rel/b.zip.delta"] == parent[0]
    store.close()


def test_chain_writers_and_deleters_in_parallel(objectstore, tmp_path):
    """Two adaptive stores (as two mounts would) write a series while a third deletes older
    files of the same directory: every file left reads, no hidden reference is missing."""
    from concurrent.futures import ThreadPoolExecutor

    from core.stats import bucket_stats

    versions = drifting_series(24, 33)
    stores = [adaptive_store(objectstore, tmp_path / f"s{i}") for i in range(3)]
    for i in range(8):
        stores[2].put(write(tmp_path / "old" / f"{i}", versions[i]), f"rel/p{i:02d}.zip")

    def writer(n: int) -> None:
        for i in range(8 + n, 24, 2):
            stores[n].put(write(tmp_path / f"w{n}" / f"{i}", versions[i]), f"rel/p{i:02d}.zip")

    def deleter() -> None:
        for i in range(8):
            stores[2].delete(stores[2].stat(f"rel/p{i:02d}.zip"))

    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(writer, 0), pool.submit(writer, 1), pool.submit(deleter)]:
            f.result()
    expected = {f"rel/p{i:02d}.zip": versions[i] for i in range(8, 24)}
    check_all(stores[0], expected, tmp_path)
    assert bucket_stats(stores[0]).missing_references == {}
    for store in stores:
        store.close()


def test_chain_interleaved_series_chain_on_their_own_kind(objectstore, tmp_path):
    """Two unrelated series written alternately into one directory: each chains on its own
    versions (names alike once numbers are ignored), not on the newest unrelated file."""
    a, b = drifting_series(10, 41), drifting_series(10, 42)
    store = adaptive_store(objectstore, tmp_path)
    expected = {}
    for i in range(10):
        for name, data in ((f"rel/alpha-1.{i}.zip", a[i]), (f"rel/beta-2.{i}.zip", b[i])):
            store.put(write(tmp_path / "src" / name.replace("/", "_"), data), name)
            expected[name] = data
    check_all(store, expected, tmp_path)
    roots = [
        k for k in keyframes(store, "rel") if not layout.chain_parent(store.head_record(k).metadata)
    ]
    assert len(roots) <= 4
    total = sum(o.size for p in objectstore.list_pages("rel/", None) for o in p.objects)
    assert total < 0.3 * sum(map(len, expected.values()))
    store.close()
