#!/usr/bin/env python3
"""What the decode-back check of every delta costs (issue #13, item 2), per file.

    .venv/bin/python scripts/bench/roundtrip_cost.py [--quick]

Each version of a series is encoded against the previous one as dgfs does (`codec.encode`,
which decodes the delta back and checks its SHA-256 before returning); the check alone
(`codec.check_round_trip`) is then timed on the same delta. Series: policy_bench.py's wheel
series (fetched into data/bench-cache/) and consecutive botocore sdists (.tar.gz).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from policy_bench import QUICK, SERIES, fetch  # noqa: E402

from core import codec  # noqa: E402
from core.hashing import sha256_file  # noqa: E402

SDISTS = ("botocore-sdist", [f"1.35.{i}" for i in range(6)])


def measure(paths: list[Path], tmp: Path) -> tuple[float, float, float]:
    """Mean seconds per file: encode with the check, the check alone; mean size in MB."""
    encode = check = 0.0
    for a, b in zip(paths, paths[1:], strict=False):
        sha, delta = sha256_file(b), tmp / "delta"
        t = time.perf_counter()
        codec.encode(a, b, delta, sha)
        encode += time.perf_counter() - t
        t = time.perf_counter()
        codec.check_round_trip(a, delta, sha, b.stat().st_size)
        check += time.perf_counter() - t
    n = max(1, len(paths) - 1)
    return encode / n, check / n, sum(p.stat().st_size for p in paths) / len(paths) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK} versions per series")
    args = ap.parse_args()
    heads = ("files", "MB/file", "encode s", "check s", "check %")
    print(f"{'series':16}", *(f"{h:>8}" for h in heads))
    with tempfile.TemporaryDirectory() as tmp:
        for name, versions in [*SERIES, SDISTS]:
            versions = versions[:QUICK] if args.quick else versions
            if name.endswith("-sdist"):
                paths = fetch(name.removesuffix("-sdist"), versions, sdist=True)
            else:
                paths = fetch(name, versions)
            enc, chk, mb = measure(paths, Path(tmp))
            share = 100 * chk / enc if enc else 0.0
            print(f"{name:16} {len(paths) - 1:8d} {mb:8.2f} {enc:8.3f} {chk:8.3f} {share:7.0f}%")


if __name__ == "__main__":
    main()
