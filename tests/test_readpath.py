"""The read path through the encrypted cache on the real local server: one reference GET."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from core.cache import CacheSettings, ContentCache
from core.config import DeltaSettings
from core.deltastore import DeltaStore
from tests.datagen import version_series, write


def test_n_deltas_fetch_their_reference_once(objectstore, deltastore, tmp_path):
    versions = version_series(8, 300_000, seed=21)
    for i, data in enumerate(versions):
        deltastore.put(write(tmp_path / f"v{i}", data), f"rp/v{i}.zip")
    cache = ContentCache(CacheSettings(cache_dir=tmp_path / "cache"))
    reader = DeltaStore(objectstore, DeltaSettings(), cache, workdir=tmp_path / "work")
    records = [reader.stat(f"rp/v{i}.zip") for i in range(1, 8)]
    before = objectstore.requests["get"]
    with ThreadPoolExecutor(4) as pool:
        entries = list(pool.map(reader.reader.open_cached, records))
    try:
        for entry, data in zip(entries, versions[1:], strict=True):
            assert entry.read(0, len(data) + 10) == data
    finally:
        for entry in entries:
            entry.close()
    # 7 delta GETs and exactly one GET of the shared reference.bin
    assert objectstore.requests["get"] - before == 7 + 1
    again = reader.reader.open_cached(records[3])  # reopening: no download, no decode
    assert again.read(0, 10) == versions[4][:10]
    again.close()
    assert objectstore.requests["get"] - before == 8
    reader.close()
    cache.close()
