"""The on-disk CAS: layout and permissions, eviction, pinning, sharing, corruption, degraded
mode and the ephemeral per-process directory."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.cache import CacheIntegrityError, CacheSettings, ContentCache
from core.cache.crypto import HEADER_SIZE, OVERHEAD

KEY = bytes(range(32))
SIZE = 100_000
FILE_SIZE = HEADER_SIZE + 2 * OVERHEAD + SIZE  # two chunks


def make_cache(base: Path, key: bytes | None = KEY, **kw) -> ContentCache:
    kw.setdefault("memory_limit_bytes", 0)
    return ContentCache(CacheSettings(cache_dir=base, key=key, **kw))


def put(cache: ContentCache, tmp_path: Path, data: bytes) -> str:
    src = tmp_path / f"src-{os.urandom(4).hex()}"
    src.write_bytes(data)
    with cache.insert_file(src) as entry:
        assert entry.read(0, len(data)) == data
        return entry.sha256


def entry_path(cache: ContentCache, sha: str) -> Path:
    return cache.directory / "objects" / sha[:2] / sha[2:4] / sha


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_permissions(tmp_path):
    base = tmp_path / "cache"
    with make_cache(base) as cache:
        sha = put(cache, tmp_path, os.urandom(SIZE))
        path = entry_path(cache, sha)
        assert path.is_file() and path.stat().st_size == FILE_SIZE
        assert mode(path) == 0o600
        for d in [base, cache.directory, path.parent, path.parent.parent]:
            assert mode(d) == 0o700, d
        for f in cache.directory.iterdir():
            if f.is_file():
                assert mode(f) == 0o600, f
        scratch = cache.scratch_path()
        assert mode(scratch) == 0o600 and mode(scratch.parent) == 0o700
        assert list((cache.directory / "objects").rglob("*.tmp")) == []


def test_lru_eviction_order_and_bound(tmp_path):
    with make_cache(tmp_path / "c", disk_limit_bytes=int(3.5 * FILE_SIZE)) as cache:
        a, b, c = (put(cache, tmp_path, os.urandom(SIZE)) for _ in range(3))
        os.utime(entry_path(cache, a), ns=(1, 1))
        os.utime(entry_path(cache, b), ns=(2, 2))
        os.utime(entry_path(cache, c), ns=(3, 3))
        cache.lookup(a).close()  # touch: a becomes the most recently used
        d = put(cache, tmp_path, os.urandom(SIZE))
        assert not entry_path(cache, b).exists()
        assert all(entry_path(cache, s).exists() for s in (a, c, d))
        stats = cache.stats()
        assert stats.evictions == 1 and stats.entries == 3
        assert stats.disk_bytes == 3 * FILE_SIZE
        for _ in range(10):
            put(cache, tmp_path, os.urandom(SIZE))
            on_disk = sum(p.stat().st_size for p in cache.directory.rglob("objects/*/*/*"))
            assert on_disk <= cache.settings.disk_limit_bytes
            assert cache.stats().disk_bytes == on_disk


def test_pinned_entry_not_evicted(tmp_path):
    with make_cache(tmp_path / "c", disk_limit_bytes=int(2.5 * FILE_SIZE)) as cache:
        data = os.urandom(SIZE)
        src = tmp_path / "pinned"
        src.write_bytes(data)
        entry = cache.insert_file(src)
        os.utime(entry_path(cache, entry.sha256), ns=(1, 1))  # oldest
        for _ in range(5):
            put(cache, tmp_path, os.urandom(SIZE))
        assert entry_path(cache, entry.sha256).exists()
        entry.close()
        entry.close()  # idempotent
        for _ in range(2):
            put(cache, tmp_path, os.urandom(SIZE))
        assert not entry_path(cache, entry.sha256).exists()


def test_entry_evicted_by_another_process_stays_readable(tmp_path):
    base = tmp_path / "c"
    data = os.urandom(SIZE)
    with make_cache(base) as ours, make_cache(base) as theirs:
        sha = put(ours, tmp_path, data)
        entry = ours.lookup(sha)
        theirs.clear()  # not pinned there
        assert not entry_path(ours, sha).exists()
        assert entry.read(0, SIZE) == data
        assert entry.read(70_000, 10) == data[70_000:70_010]
        entry.close()
        assert ours.lookup(sha) is None


def test_entry_larger_than_disk_bound_is_transient(tmp_path):
    with make_cache(tmp_path / "c", disk_limit_bytes=SIZE // 2) as cache:
        data = os.urandom(SIZE)
        src = tmp_path / "big"
        src.write_bytes(data)
        with cache.insert_file(src) as entry:
            assert entry.read(0, SIZE) == data
            assert not entry_path(cache, entry.sha256).exists()
        assert cache.stats().disk_bytes == 0


def test_threads_writing_one_entry(tmp_path):
    data = os.urandom(3 * SIZE)
    src = tmp_path / "src"
    src.write_bytes(data)
    barrier = threading.Barrier(8)
    results: list[bytes] = []
    with make_cache(tmp_path / "c") as cache:

        def work() -> None:
            barrier.wait()
            with cache.insert_file(src, hashlib.sha256(data).hexdigest()) as entry:
                results.append(entry.read(0, len(data)))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [data] * 8
        files = list(cache.directory.rglob("objects/*/*/*"))
        assert len(files) == 1
        with make_cache(tmp_path / "c") as fresh, fresh.lookup(files[0].name) as entry:
            assert entry.read(0, len(data)) == data


WORKER = """
import os, sys, hashlib, random
from pathlib import Path
from core.cache import CacheSettings, ContentCache
base, start = Path(sys.argv[1]), Path(sys.argv[2])
cache = ContentCache(CacheSettings(cache_dir=base, key=bytes(range(32)), memory_limit_bytes=0))
while not start.exists():
    pass
for i in range(30):
    data = random.Random(i).randbytes(150_000 + i)
    src = cache.scratch_path()
    src.write_bytes(data)
    with cache.insert_file(src, hashlib.sha256(data).hexdigest()) as entry:
        assert entry.read(0, len(data)) == data, i
    with cache.lookup(hashlib.sha256(data).hexdigest()) as entry:
        assert entry.read(0, len(data)) == data, i
    src.unlink()
cache.close()
print("ok")
"""


def test_two_processes_writing_the_same_entries(tmp_path):
    import random

    base, start = tmp_path / "c", tmp_path / "go"
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(base), str(start)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    start.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    with make_cache(base) as cache:
        for i in range(30):
            data = random.Random(i).randbytes(150_000 + i)
            with cache.lookup(hashlib.sha256(data).hexdigest()) as entry:
                assert entry.read(0, len(data)) == data
        assert cache.stats().entries == 30
    assert [p.name for p in base.iterdir()] == ["shared"]  # both ephemeral dirs removed


def test_wrong_key_is_a_miss(tmp_path):
    base = tmp_path / "c"
    data = os.urandom(SIZE)
    with make_cache(base) as first:
        sha = put(first, tmp_path, data)
    with make_cache(base, key=os.urandom(32)) as other:
        assert other.lookup(sha) is None
        assert other.stats().corruptions == 0
        assert put(other, tmp_path, data) == sha  # replaces it under its own key
    with make_cache(base) as first:
        assert first.lookup(sha) is None


def test_tampered_entry_deleted_and_logged(tmp_path, caplog):
    data = os.urandom(SIZE)
    with make_cache(tmp_path / "c") as cache:
        sha = put(cache, tmp_path, data)
        path = entry_path(cache, sha)
        blob = bytearray(path.read_bytes())
        blob[HEADER_SIZE + 20] ^= 1
        path.write_bytes(bytes(blob))
        entry = cache.lookup(sha)
        assert entry.read(70_000, 10) == data[70_000:70_010]  # chunk 1 intact
        with caplog.at_level(logging.WARNING, logger="dgfs.cache"):
            with pytest.raises(CacheIntegrityError):
                entry.read(0, 10)
        entry.close()
        assert sha in caplog.text
        assert not path.exists()
        assert cache.lookup(sha) is None
        assert cache.stats().corruptions == 1


def test_truncated_entry_is_a_miss(tmp_path, caplog):
    with make_cache(tmp_path / "c") as cache:
        sha = put(cache, tmp_path, os.urandom(SIZE))
        path = entry_path(cache, sha)
        with open(path, "r+b") as f:
            f.truncate(FILE_SIZE - 1)
        with caplog.at_level(logging.WARNING, logger="dgfs.cache"):
            assert cache.lookup(sha) is None
        assert sha in caplog.text and not path.exists()
        assert cache.stats().corruptions == 1


def test_copy_to_verifies(tmp_path):
    data = os.urandom(SIZE)
    with make_cache(tmp_path / "c") as cache:
        sha = put(cache, tmp_path, data)
        with cache.lookup(sha) as entry:
            entry.copy_to(tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data
        assert mode(tmp_path / "out") == 0o600
        path = entry_path(cache, sha)
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 1
        path.write_bytes(bytes(blob))
        with cache.lookup(sha) as entry, pytest.raises(CacheIntegrityError):
            entry.copy_to(tmp_path / "out2")
        assert not (tmp_path / "out2").exists() and not path.exists()


def test_persistent_key_survives_restart(tmp_path):
    data = os.urandom(SIZE)
    with make_cache(tmp_path / "c") as cache:
        sha = put(cache, tmp_path, data)
    with make_cache(tmp_path / "c") as cache, cache.lookup(sha) as entry:
        assert entry.read(0, SIZE) == data


def test_ephemeral_cache_is_private_and_removed(tmp_path):
    base = tmp_path / "c"
    data = os.urandom(SIZE)
    cache = make_cache(base, key=None)
    sha = put(cache, tmp_path, data)
    directory = cache.directory
    assert directory.parent == base and directory.name.startswith(f"ephemeral-{os.getpid()}-")
    assert entry_path(cache, sha).exists()
    with make_cache(base, key=None) as other:
        assert other.lookup(sha) is None
    cache.close()
    cache.close()
    assert not directory.exists()
    with make_cache(base, key=None) as again:
        assert again.lookup(sha) is None


def test_leftovers_of_dead_processes_removed(tmp_path):
    base = tmp_path / "c"
    base.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_dir = base / f"ephemeral-{dead.stdout.strip()}-abc123"
        live_dir = base / f"ephemeral-{live.pid}-abc123"
        for d in (dead_dir, live_dir):
            (d / "objects").mkdir(parents=True)
            (d / "objects" / "x").write_bytes(b"secret")
        with make_cache(base, key=None):
            assert not dead_dir.exists()
            assert live_dir.exists()
    finally:
        live.kill()
        live.wait()


def test_unusable_directory_degrades_to_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    data = os.urandom(SIZE)
    with caplog.at_level(logging.WARNING, logger="dgfs.cache"):
        with make_cache(blocker / "cache", memory_limit_bytes=2 * SIZE) as cache:
            assert cache.directory is None
            sha = put(cache, tmp_path, data)
            with cache.lookup(sha) as entry:
                assert entry.read(0, SIZE) == data
            x_sha = hashlib.sha256(b"x").hexdigest()
            with cache.get_or_create(x_sha, lambda p: p.write_bytes(b"x")) as entry:
                assert entry.read(0, 10) == b"x"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_full_disk_degrades_once(tmp_path, monkeypatch, caplog):
    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    with make_cache(tmp_path / "c", memory_limit_bytes=4 * SIZE) as cache:
        monkeypatch.setattr(os, "replace", full)
        with caplog.at_level(logging.WARNING, logger="dgfs.cache"):
            shas = [put(cache, tmp_path, os.urandom(SIZE)) for _ in range(3)]
        assert cache.directory is None
        assert all(cache.lookup(s) is not None for s in shas)
        assert list((tmp_path / "c" / "shared" / "objects").rglob("*/*/*")) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space" in warnings[0].getMessage()


def test_disk_tier_comes_back_after_the_disk_frees_up(tmp_path, monkeypatch):
    from core.cache import content_cache

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_replace = os.replace
    monkeypatch.setattr(content_cache, "DISK_RETRY_SECONDS", 0.0)
    with make_cache(tmp_path / "c", memory_limit_bytes=4 * SIZE) as cache:
        monkeypatch.setattr(os, "replace", full)
        put(cache, tmp_path, os.urandom(SIZE))
        assert cache.directory is None  # set aside: memory only
        monkeypatch.setattr(os, "replace", real_replace)  # the disk has room again
        sha = put(cache, tmp_path, os.urandom(SIZE))
        assert cache.directory is not None
        assert entry_path(cache, sha).exists()
