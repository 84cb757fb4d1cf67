#!/usr/bin/env python3
"""Archive deltas through the store (issue #14): a wheel series, an sdist series and a binary
wheel series written with `archive_deltas` on and off (default `deltaglider` policy), then
read back cold.

    .venv/bin/python scripts/bench/archive_store_bench.py [--quick] [--json] [--series NAME]

Files come from scripts/bench/policy_bench.py's `fetch` (data/bench-cache/, git-ignored).
Each run writes the series in release order into its own bucket of a private local S3
server, through a read cache as a mount would; a second store with an empty cache then reads
every file in order (cold read: the reference, and for archive deltas its canonical form, are
fetched and made once, then served from that cache), and a third reads the last file alone
(first read with nothing cached). Stored bytes: every object under the prefix. Limit:
`zstd -19 --long=31` over the concatenated series. Phase seconds: where archive writes and
reads spend their time (core/archivedelta.py PHASE_SECONDS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from policy_bench import fetch, zstd_limit  # noqa: E402

from core import archivedelta  # noqa: E402
from core.cache import CacheSettings, ContentCache  # noqa: E402
from core.config import DeltaSettings, s3_settings_from_env  # noqa: E402
from core.deltastore import DeltaStore  # noqa: E402
from core.objectstore import ObjectStore  # noqa: E402
from dgfs import localserver  # noqa: E402

SERIES = [
    ("botocore", [f"1.35.{i}" for i in range(12)], False),
    ("botocore-sdist", [f"1.35.{i}" for i in range(6)], True),
    ("ruff", [f"0.6.{i}" for i in range(8)], False),  # a Rust binary: nothing re-deflates
]
QUICK = {"botocore": 10, "botocore-sdist": 6, "ruff": 8}


def log(msg: str) -> None:
    print(f"[archive-store-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(s3, paths: list[Path], archive: bool, tmp: Path) -> dict:
    bucket = f"ab-{uuid.uuid4().hex[:12]}"
    objects = ObjectStore(bucket, s3)
    objects.create_bucket()
    settings = DeltaSettings(archive_deltas=archive)
    archivedelta.PHASE_SECONDS.clear()
    write = read = 0.0
    transforms = 0
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-w-{bucket}")) as cache:
        store = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"w-{bucket}")
        try:
            for p in paths:
                t = time.perf_counter()
                record = store.put(p, f"rel/{p.name}")
                write += time.perf_counter() - t
                transforms += bool(record.metadata.get("dgfs-transform"))
        finally:
            store.close()
    write_phases = dict(archivedelta.PHASE_SECONDS)
    archivedelta.PHASE_SECONDS.clear()
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-r-{bucket}")) as cache:
        reader = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"r-{bucket}")
        try:
            for p in paths:
                t = time.perf_counter()
                with reader.reader.open_cached(reader.stat(f"rel/{p.name}")) as entry:
                    entry.copy_to(tmp / "out")
                read += time.perf_counter() - t
                assert (tmp / "out").read_bytes() == p.read_bytes(), p.name
        finally:
            reader.close()
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-1-{bucket}")) as cache:
        reader = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"1-{bucket}")
        try:
            t = time.perf_counter()
            with reader.reader.open_cached(reader.stat(f"rel/{paths[-1].name}")) as entry:
                entry.copy_to(tmp / "out")
            first = time.perf_counter() - t
        finally:
            reader.close()
    read_phases = dict(archivedelta.PHASE_SECONDS)
    listed = [o for page in objects.list_pages("rel/", None) for o in page.objects]
    return {
        "stored": sum(o.size for o in listed),
        "archive_deltas": transforms,
        "write_s": write / len(paths),
        "read_s": read / len(paths),
        "first_read_s": first,
        "write_phases": {k: round(v, 2) for k, v in write_phases.items()},
        "read_phases": {k: round(v, 2) for k, v in read_phases.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 wheels, 6 sdists, 8 ruff wheels")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--series", action="append", choices=[name for name, _, _ in SERIES],
        help="only these series (repeatable; default: all)",
    )  # fmt: skip
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dgfs-archive-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = localserver.start(tmp / "s3", persist=False)
        os.environ.update(server.env())
        try:
            s3 = s3_settings_from_env()
            for name, versions, sdist in SERIES:
                if args.series and name not in args.series:
                    continue
                count = QUICK[name] if args.quick else len(versions)
                paths = fetch(name.removesuffix("-sdist"), versions[:count], sdist=sdist)
                original = sum(p.stat().st_size for p in paths)
                log(f"{name}: {len(paths)} versions, {original / 1e6:.1f} MB")
                row = {"series": name, "versions": len(paths), "original": original}
                for archive in (False, True):
                    log(f"{name}: archive deltas {'on' if archive else 'off'}")
                    row["on" if archive else "off"] = run(s3, paths, archive, tmp)
                row["zstd"] = zstd_limit(name, paths)
                rows.append(row)
                log(json.dumps(row))
        finally:
            localserver.stop(tmp / "s3")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    print(
        "| series | n | original MB | archive deltas | stored / original | stored / zstd "
        "| write s/file | cold read s/file | first read s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = r["original"]
        for mode in ("off", "on"):
            m = r[mode]
            print(
                f"| {r['series']} | {r['versions']} | {o / 1e6:.1f} | {mode} "
                f"({m['archive_deltas']} files) | {m['stored'] / o:.3f} "
                f"| {m['stored'] / r['zstd']:.2f} | {m['write_s']:.2f} | {m['read_s']:.2f} "
                f"| {m['first_read_s']:.2f} |"
            )
        print(f"| {r['series']} | | | zstd -19 --long=31 limit | {r['zstd'] / o:.3f} | 1.00 |||")
    for r in rows:
        print(f"\n{r['series']} archive write phases (s, whole series): {r['on']['write_phases']}")
        print(f"{r['series']} archive read phases (s, in-order + first): {r['on']['read_phases']}")


if __name__ == "__main__":
    sys.exit(main())
