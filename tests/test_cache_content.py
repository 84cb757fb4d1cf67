"""ContentCache behaviour: memory tier, memory backend, single-flight, plain index, stats."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from core.cache import (
    CacheIntegrityError,
    CacheSettings,
    CacheStats,
    ContentCache,
    NotCacheable,
)
from core.cache.memory import MemoryLRU
from core.cache.plain_index import PlainIndex

KEY = bytes(range(32))


def make_cache(tmp_path: Path, **kw) -> ContentCache:
    kw.setdefault("key", KEY)
    return ContentCache(CacheSettings(cache_dir=tmp_path / "cache", **kw))


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{os.urandom(4).hex()}"
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_memory_lru_bound_and_order():
    lru = MemoryLRU(100)
    assert lru.put("a", b"a" * 40) and lru.put("b", b"b" * 40)
    assert lru.get("a") == b"a" * 40  # a is now most recent
    assert lru.put("c", b"c" * 40)
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.bytes == 80 and lru.evictions == 1
    assert not lru.put("big", b"x" * 101)
    assert lru.bytes == 80 and len(lru) == 2
    lru.discard("a")
    assert lru.bytes == 40
    lru.clear()
    assert lru.bytes == 0 and len(lru) == 0


def test_memory_backend_caches_small_and_refuses_oversize(tmp_path):
    small, big = os.urandom(1000), os.urandom(5000)
    with make_cache(tmp_path, backend="memory", memory_limit_bytes=4000) as cache:
        assert cache.directory is None
        with cache.insert_file(write(tmp_path, small)) as entry:
            assert entry.read(10, 20) == small[10:30]
        with cache.lookup(sha(small)) as entry:
            assert entry.read(0, 2000) == small
        with pytest.raises(NotCacheable) as info:
            cache.insert_file(write(tmp_path, big))
        assert info.value.size == 5000 and info.value.limit == 4000
        calls = []

        def produce(path: Path) -> None:
            calls.append(path)
            path.write_bytes(big)

        with pytest.raises(NotCacheable):
            cache.get_or_create(sha(big), produce)
        assert len(calls) == 1 and not calls[0].exists()
        assert cache.lookup(sha(big)) is None
        stats = cache.stats()
        assert stats.memory_bytes == 1000 and stats.entries == 1 and stats.disk_bytes == 0
    assert not (tmp_path / "cache" / "shared").exists()


def test_hot_tier_admits_small_entries_only(tmp_path):
    small, big = os.urandom(1000), os.urandom(200_000)
    with make_cache(tmp_path, memory_limit_bytes=800_000) as cache:
        cache.insert_file(write(tmp_path, small)).close()
        cache.insert_file(write(tmp_path, big)).close()
        assert cache.stats().memory_bytes == 1000
        cache.clear()
        assert cache.stats().memory_bytes == 0 and cache.stats().entries == 0
    with make_cache(tmp_path, memory_limit_bytes=800_000) as cache:
        assert cache.lookup(sha(small)) is None


def test_hot_tier_promotes_on_lookup(tmp_path):
    data = os.urandom(5000)
    with make_cache(tmp_path, memory_limit_bytes=0) as cache:
        cache.insert_file(write(tmp_path, data)).close()
    with make_cache(tmp_path, memory_limit_bytes=100_000) as cache:
        with cache.lookup(sha(data)) as entry:
            assert entry.read(0, 5000) == data
        assert cache.stats().memory_bytes == 5000


def test_insert_with_wrong_sha_stores_nothing(tmp_path):
    data = os.urandom(3000)
    with make_cache(tmp_path) as cache:
        with pytest.raises(CacheIntegrityError):
            cache.insert_file(write(tmp_path, data), sha(b"other"))
        assert cache.lookup(sha(b"other")) is None and cache.lookup(sha(data)) is None
        assert cache.stats().entries == 0
        cache.insert_file(write(tmp_path, data)).close()
        with pytest.raises(CacheIntegrityError):  # existing entry, file does not match
            cache.insert_file(write(tmp_path, b"nope"), sha(data))


def test_single_flight(tmp_path):
    data = os.urandom(300_000)
    calls = []
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def produce(path: Path) -> None:
        calls.append(path)
        time.sleep(0.2)
        path.write_bytes(data)

    with make_cache(tmp_path, memory_limit_bytes=0) as cache:

        def work() -> None:
            barrier.wait()
            with cache.get_or_create(sha(data), produce) as entry:
                results.append(entry.read(0, len(data)))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1 and results == [data] * 8
        assert not calls[0].exists()
        assert not cache._disk._pins  # every handle was released
        with cache.get_or_create(sha(data), produce) as entry:
            assert entry.size == len(data)
        assert len(calls) == 1


def test_single_flight_error_reaches_all_and_is_not_cached(tmp_path):
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    calls = []

    def produce(path: Path) -> None:
        calls.append(1)
        time.sleep(0.2)
        raise RuntimeError("S3 down")

    with make_cache(tmp_path) as cache:

        def work() -> None:
            barrier.wait()
            try:
                cache.get_or_create(sha(b"data"), produce)
            except RuntimeError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 4 and len(calls) == 1
        with cache.get_or_create(sha(b"data"), lambda p: p.write_bytes(b"data")) as entry:
            assert entry.read(0, 10) == b"data"


def test_get_or_create_verifies_produced_bytes(tmp_path):
    with make_cache(tmp_path) as cache:
        with pytest.raises(CacheIntegrityError):
            cache.get_or_create(sha(b"good"), lambda p: p.write_bytes(b"evil"))
        assert cache.lookup(sha(b"good")) is None and cache.lookup(sha(b"evil")) is None


def test_get_or_create_plain(tmp_path):
    data = os.urandom(70_000)
    calls = []

    def produce(path: Path) -> None:
        calls.append(1)
        path.write_bytes(data)

    with make_cache(tmp_path) as cache:
        for _ in range(2):
            with cache.get_or_create_plain("b", "k/x.zip", '"etag1"', produce) as entry:
                assert entry.sha256 == sha(data) and entry.read(0, len(data)) == data
        assert len(calls) == 1
    with make_cache(tmp_path) as cache:  # the index persists with the key
        with cache.get_or_create_plain("b", "k/x.zip", "etag1", produce) as entry:
            assert entry.read(0, 5) == data[:5]
        assert len(calls) == 1
        cache.get_or_create_plain("b", "k/x.zip", "etag2", produce).close()
        assert len(calls) == 2
        stats = cache.stats()
        assert (stats.hits, stats.misses) == (1, 1)


def test_plain_index_round_trip(tmp_path):
    path = tmp_path / "index.sqlite3"
    index = PlainIndex(path, KEY)
    assert index.get("b", "k", "e") is None
    index.put("b", "k", "e", "a" * 64)
    index.put("b", "k2", "e", "b" * 64)
    index.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert b"k2" not in path.read_bytes()
    index = PlainIndex(path, KEY)
    assert index.get("b", "k", '"e"') == "a" * 64 and index.get("b", "k2", "e") == "b" * 64
    assert index.get("b", "k", "other") is None and index.get("bk", "", "e") is None
    index.clear()
    assert index.get("b", "k", "e") is None
    index.close()
    assert PlainIndex(path, os.urandom(32)).get("b", "k2", "e") is None


def test_stats_and_entry_lifecycle(tmp_path):
    data = os.urandom(1000)
    with make_cache(tmp_path) as cache:
        assert cache.lookup(sha(data)) is None
        entry = cache.insert_file(write(tmp_path, data))
        twin = entry.duplicate()
        entry.close()
        assert twin.read(0, 3) == data[:3]
        twin.close()
        with pytest.raises(ValueError):
            twin.read(0, 1)
        cache.lookup(sha(data)).close()
        stats = cache.stats()
        assert isinstance(stats, CacheStats)
        assert stats.as_dict()["hits"] == 1 and stats.misses == 1 and stats.entries == 1
        with pytest.raises(ValueError):
            cache.lookup("not-a-sha")


def test_key_never_in_repr_or_logs(tmp_path, caplog):
    key_text = base64.urlsafe_b64encode(KEY).decode()
    settings = CacheSettings.from_env({"DG_CACHE_ENCRYPTION_KEY": key_text})
    assert (
        settings.key and key_text not in repr(settings) and str(settings.key) not in repr(settings)
    )
    assert "hidden" in repr(settings)
    with caplog.at_level(logging.DEBUG):
        cache = ContentCache(CacheSettings(cache_dir=tmp_path / "c", key=settings.key))
        data = os.urandom(1000)
        cache.insert_file(write(tmp_path, data)).close()
        cache.lookup(sha(data)).close()
        cache.close()
    text = caplog.text
    for secret in (key_text, settings.key.hex(), KEY.hex(), repr(settings.key)):
        assert secret not in text
    for path in (tmp_path / "c").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert settings.key not in blob and KEY not in blob
