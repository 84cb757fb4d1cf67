#!/usr/bin/env python3
"""Benchmark the encrypted read cache against a plain local file and a whole-file Fernet cache.

    python scripts/bench/cache_bench.py [--size-mb 200] [--json]

Each measurement starts with a dropped page cache when that is permitted (root); otherwise
the output says so and the numbers are warm-cache numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.fernet import Fernet  # noqa: E402

from core.cache import CacheSettings, ContentCache  # noqa: E402

MiB = 2**20
SEQ_BLOCK = MiB
RAND_BLOCK = 4096


def drop_caches() -> str | None:
    """Drop the page cache; the reason it could not, or None."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"could not drop the page cache ({exc.strerror}); numbers are warm-cache"
    return None


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    nbytes = fn()
    return time.perf_counter() - start, nbytes


def sequential(read: Callable[[int, int], bytes], size: int, limit: int | None = None) -> int:
    total = 0
    for n, offset in enumerate(range(0, size, SEQ_BLOCK)):
        if limit is not None and n >= limit:
            break
        total += len(read(offset, SEQ_BLOCK))
    return total


def scattered(read: Callable[[int, int], bytes], offsets: list[int]) -> int:
    return sum(len(read(offset, RAND_BLOCK)) for offset in offsets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--random-ops", type=int, default=2000)
    parser.add_argument("--fernet-ops", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    size = args.size_mb * MiB
    rng = random.Random(1)
    offsets = [rng.randrange(0, size - RAND_BLOCK) for _ in range(args.random_ops)]
    results: dict[str, object] = {"size_mb": args.size_mb, "notes": []}
    notes: list[str] = results["notes"]  # type: ignore[assignment]

    def note_drop() -> None:
        reason = drop_caches()
        if reason and reason not in notes:
            notes.append(reason)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cache-bench-") as work:
        work_dir = Path(work)
        plain = work_dir / "plain.bin"
        with open(plain, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MiB))

        settings = CacheSettings(
            cache_dir=work_dir / "cache",
            key=os.urandom(32),
            disk_limit_bytes=4 * size,
            memory_limit_bytes=0,  # measure the disk tier, not the memory LRU
        )
        cache = ContentCache(settings)
        start = time.perf_counter()
        with cache.insert_file(plain) as inserted:
            sha = inserted.sha256
        results["insert_mb_s"] = size / MiB / (time.perf_counter() - start)

        fernet = Fernet(Fernet.generate_key())
        token_path = work_dir / "fernet.bin"
        token_path.write_bytes(fernet.encrypt(plain.read_bytes()))

        def fernet_read(offset: int, n: int) -> bytes:
            return fernet.decrypt(token_path.read_bytes())[offset : offset + n]

        fd = os.open(plain, os.O_RDONLY)
        entry = cache.lookup(sha)
        assert entry is not None

        runs = {
            "local": lambda off, n: os.pread(fd, n, off),
            "ours": entry.read,
        }
        for name, read in runs.items():
            note_drop()
            seconds, nbytes = timed(lambda read=read: sequential(read, size))
            results[f"{name}_seq_mb_s"] = nbytes / MiB / seconds
            note_drop()
            seconds, _ = timed(lambda read=read: scattered(read, offsets))
            results[f"{name}_rand_ops_s"] = len(offsets) / seconds

        note_drop()
        fops = max(1, args.fernet_ops // 4)
        seconds, nbytes = timed(lambda: sequential(fernet_read, size, limit=fops))
        results["fernet_seq_mb_s"] = nbytes / MiB / seconds
        results["fernet_seq_ops"] = fops
        note_drop()
        seconds, _ = timed(lambda: scattered(fernet_read, offsets[: args.fernet_ops]))
        results["fernet_rand_ops_s"] = args.fernet_ops / seconds
        results["fernet_rand_ops"] = args.fernet_ops

        entry.close()
        os.close(fd)
        cache.close()

    results["ratio_seq_ours_vs_local"] = results["ours_seq_mb_s"] / results["local_seq_mb_s"]
    results["ratio_rand_ours_vs_fernet"] = results["ours_rand_ops_s"] / results["fernet_rand_ops_s"]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(results, args.random_ops)
    return 0


def _print_table(r: dict, random_ops: int) -> None:
    print(f"file: {r['size_mb']} MiB random data; insert into cache: {r['insert_mb_s']:.0f} MB/s")
    print(f"{'':28}{'seq 1 MiB (MB/s)':>18}{'rand 4 KiB (ops/s)':>20}")
    print(f"{'(a) local file':28}{r['local_seq_mb_s']:>18.0f}{r['local_rand_ops_s']:>20.0f}")
    print(f"{'(b) CacheEntry.read':28}{r['ours_seq_mb_s']:>18.0f}{r['ours_rand_ops_s']:>20.0f}")
    print(
        f"{'(c) whole-file Fernet':28}{r['fernet_seq_mb_s']:>18.1f}{r['fernet_rand_ops_s']:>20.2f}"
        f"   ({r['fernet_seq_ops']} seq / {r['fernet_rand_ops']} random ops measured)"
    )
    print(f"random ops measured for (a)/(b): {random_ops}")
    seq, rand = r["ratio_seq_ours_vs_local"], r["ratio_rand_ours_vs_fernet"]
    print(f"ratio ours/local sequential: {seq:.2f}  (goal >= 0.8)")
    print(f"ratio ours/fernet random:    {rand:.0f}x (goal >= 10)")
    for note in r["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
