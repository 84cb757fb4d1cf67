#!/usr/bin/env python3
"""Reference policies on real release series: stored/original, encode/decode time, depth.

    .venv/bin/python scripts/bench/policy_bench.py [--quick] [--json]

Wheels are fetched with `pip download` into data/bench-cache/<pkg>/<version>/ (git-ignored,
shared with scripts/bench/run.py). Each policy writes the series in release order into its
own bucket of a private local S3 server (dgfs.localserver in a temp dir, stopped on exit),
through an encrypted read cache as a mount would; the files are then read back in order by a
second store with a cold cache. Stored bytes are every object under the prefix (references,
keyframes and chain links included). Comparisons: an xdelta3 chain against the previous
version (first raw; depth unbounded) and `zstd -19 --long=31` over the concatenated series
(a practical limit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import codec  # noqa: E402
from core.cache import CacheSettings, ContentCache  # noqa: E402
from core.config import DeltaSettings, s3_settings_from_env  # noqa: E402
from core.deltastore import DeltaStore  # noqa: E402
from core.hashing import sha256_file  # noqa: E402
from core.objectstore import ObjectStore  # noqa: E402
from core.policies.hidden import reconstruct_depth  # noqa: E402
from dgfs import localserver  # noqa: E402

CACHE = ROOT / "data" / "bench-cache"
PY = str(ROOT / ".venv" / "bin" / "python")
WHEEL = ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11"]
SERIES = [
    (
        "requests",
        [
            "2.25.0",
            "2.25.1",
            "2.26.0",
            "2.27.0",
            "2.27.1",
            "2.28.0",
            "2.28.1",
            "2.28.2",
            "2.29.0",
            "2.30.0",
            "2.31.0",
            "2.32.0",
            "2.32.1",
            "2.32.2",
            "2.32.3",
        ],
    ),
    (
        "pip",
        [
            "23.0",
            "23.0.1",
            "23.1",
            "23.1.1",
            "23.1.2",
            "23.2",
            "23.2.1",
            "23.3",
            "23.3.1",
            "23.3.2",
            "24.0",
            "24.1",
            "24.1.1",
            "24.1.2",
            "24.2",
        ],
    ),
    ("botocore", [f"1.35.{i}" for i in range(20)]),
]
QUICK = 5
POLICIES = ("deltaglider", "adaptive-compatible", "adaptive")


def log(msg: str) -> None:
    print(f"[policy-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fetch(pkg: str, versions: list[str], sdist: bool = False) -> list[Path]:
    """The wheels (or, with `sdist`, the source archives) of `pkg` at `versions`."""
    out = []
    kind = ["--no-binary", ":all:"] if sdist else WHEEL
    for v in versions:
        d = CACHE / (f"{pkg}-sdist" if sdist else pkg) / v
        files = sorted(d.glob("*")) if d.is_dir() else []
        if not files:
            log(f"pip download {pkg}=={v}")
            d.mkdir(parents=True, exist_ok=True)
            cmd = [PY, "-m", "pip", "download", "-q", "--no-deps", *kind, f"{pkg}=={v}", "-d"]
            subprocess.run([*cmd, str(d)], check=True, capture_output=True)
            files = sorted(d.glob("*"))
        out.append(files[0])
    return out


def zstd_limit(name: str, paths: list[Path]) -> int:
    key = CACHE / f"zstd-policy-{name}-{len(paths)}-{paths[-1].name}.json"
    if key.exists():
        return json.loads(key.read_text())["bytes"]
    cat = subprocess.Popen(["cat", *map(str, paths)], stdout=subprocess.PIPE)
    z = subprocess.run(
        ["zstd", "-19", "--long=31", "-T0", "-c"], stdin=cat.stdout, capture_output=True
    )
    cat.wait()
    size = len(z.stdout)
    key.write_text(json.dumps({"bytes": size}))
    return size


def chain_vs_previous(paths: list[Path], tmp: Path) -> tuple[int, float]:
    total, secs = paths[0].stat().st_size, 0.0
    for a, b in zip(paths, paths[1:], strict=False):
        t = time.perf_counter()
        total += codec.encode(a, b, tmp / "chain.delta", sha256_file(b))
        secs += time.perf_counter() - t
    return total, secs / max(1, len(paths) - 1)


def run_policy(s3, policy: str, paths: list[Path], tmp: Path) -> dict:
    bucket = f"pb-{uuid.uuid4().hex[:12]}"
    objects = ObjectStore(bucket, s3)
    objects.create_bucket()
    settings = DeltaSettings(reference_policy=policy)
    enc = dec = 0.0
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-w-{bucket}")) as cache:
        store = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"w-{bucket}")
        try:
            for p in paths:
                t = time.perf_counter()
                store.put(p, f"rel/{p.name}")
                enc += time.perf_counter() - t
        finally:
            store.close()
    depths = {}
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-r-{bucket}")) as cache:
        reader = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"r-{bucket}")
        try:
            for p in paths:
                t = time.perf_counter()
                with reader.reader.open_cached(reader.stat(f"rel/{p.name}")) as entry:
                    entry.copy_to(tmp / "out")
                dec += time.perf_counter() - t
                assert (tmp / "out").read_bytes() == p.read_bytes(), p.name
                depths[p] = reconstruct_depth(reader, reader.stat(f"rel/{p.name}"))
        finally:
            reader.close()
    deepest = max(paths, key=lambda p: (depths[p], paths.index(p)))
    with ContentCache(CacheSettings(cache_dir=tmp / f"cache-1-{bucket}")) as cache:
        reader = DeltaStore(objects, settings, cache=cache, workdir=tmp / f"1-{bucket}")
        try:
            t = time.perf_counter()
            with reader.reader.open_cached(reader.stat(f"rel/{deepest.name}")) as entry:
                entry.copy_to(tmp / "out")
            cold = time.perf_counter() - t
        finally:
            reader.close()
    listed = [o for page in objects.list_pages("rel/", None) for o in page.objects]
    return {
        "stored": sum(o.size for o in listed),
        "hidden": sum("/.dgfs/refs/" in o.key for o in listed),
        "encode_s": enc / len(paths),
        "decode_s": dec / len(paths),
        "deepest_cold_s": cold,
        "max_depth": max(depths.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK} versions per series")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dgfs-policy-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = localserver.start(tmp / "s3", persist=False)
        os.environ.update(server.env())
        try:
            s3 = s3_settings_from_env()
            for name, versions in SERIES:
                paths = fetch(name, versions[:QUICK] if args.quick else versions)
                original = sum(p.stat().st_size for p in paths)
                log(f"{name}: {len(paths)} versions, {original / 1e6:.1f} MB")
                row = {"series": name, "versions": len(paths), "original": original}
                for policy in POLICIES:
                    log(f"{name}: {policy}")
                    row[policy] = run_policy(s3, policy, paths, tmp)
                row["chain"], row["chain_encode_s"] = chain_vs_previous(paths, tmp)
                row["zstd"] = zstd_limit(name, paths)
                rows.append(row)
        finally:
            localserver.stop(tmp / "s3")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    short = {"deltaglider": "dg", "adaptive-compatible": "compat", "adaptive": "adapt"}
    print(
        f"{'series':<9} {'n':>2} {'orig MB':>8} | {'dg':>6} {'compat':>6} {'adapt':>6} "
        f"{'chain':>6} {'zstd':>6} {'ad/zs':>6} | {'hidden':>6} | "
        + " ".join(f"{'enc ' + short[p]:>10}" for p in POLICIES)
        + " | "
        + " ".join(f"{'dec ' + short[p]:>10}" for p in POLICIES)
        + " | "
        + " ".join(f"{'cold ' + short[p]:>10}" for p in POLICIES)
        + " | depth"
    )
    for r in rows:
        o, ad = r["original"], r["adaptive"]
        print(
            f"{r['series']:<9} {r['versions']:>2} {o / 1e6:>8.2f} | "
            + " ".join(f"{r[p]['stored'] / o:>6.3f}" for p in POLICIES)
            + f" {r['chain'] / o:>6.3f} {r['zstd'] / o:>6.3f} {ad['stored'] / r['zstd']:>6.2f} | "
            + f"{r['adaptive-compatible']['hidden']:>2}/{ad['hidden']:>3} | "
            + " ".join(f"{r[p]['encode_s']:>10.3f}" for p in POLICIES)
            + " | "
            + " ".join(f"{r[p]['decode_s']:>10.3f}" for p in POLICIES)
            + " | "
            + " ".join(f"{r[p]['deepest_cold_s']:>10.3f}" for p in POLICIES)
            + " | "
            + "/".join(str(r[p]["max_depth"]) for p in POLICIES)
        )
    print(
        "stored/original: dg = deltaglider policy, compat = adaptive-compatible, adapt = "
        "adaptive, chain = xdelta3 vs previous, zstd = -19 --long=31 over the series; "
        "ad/zs = adaptive / zstd (goal <= 1.25); hidden = hidden references compat/adapt; "
        "enc/dec = seconds per file (put, then a cold-cache read in order); cold = seconds "
        "to read the deepest file with an empty cache; depth = max sequential decodes per "
        "file, dg/compat/adapt"
    )


if __name__ == "__main__":
    sys.exit(main())
