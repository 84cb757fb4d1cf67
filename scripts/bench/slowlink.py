#!/usr/bin/env python3
"""Slow-link workload: copy the release series over a bandwidth-limited path to S3.

    .venv/bin/python scripts/bench/slowlink.py [--quick] [--rate 50mbit] [--systems dgfs,s3fs]
        [--series botocore] [--random N] [--per-file] [--profile] [--keep]

Creates a network namespace, shapes its loopback with a `tbf` qdisc, and re-runs itself
inside it (`ip netns exec`), where a private local S3 server and every mount live on
127.0.0.1: copy, wait-until-stored and unmount all happen in that one process tree (each
`ip netns exec` has its own mount namespace). Time = until every object is in the bucket
(rclone's `cp` returns before it uploads). `--random N` adds an incompressible series of N
random 8 MiB files; `--per-file` copies with one `cp` per file instead of one `cp` of all.
Prints one JSON list of result rows on stdout; the namespace is removed on exit, also on
Ctrl-C. Series files must already be downloaded (scripts/bench/run.py fetches them; the
namespace has no other network).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import run as harness

# (label, mount system or None for a client tool, extra mount options)
SYSTEMS = [
    ("dgfs", "dgfs", ()),
    ("dgfs adaptive", "dgfs", ("--reference-policy", "adaptive")),
    ("s3fs", "s3fs", ()),
    ("rclone", "rclone", ()),
    ("boto3", None, ()),
    ("deltaglider", None, ()),
]


def outside(args: argparse.Namespace) -> int:
    """Create and shape the namespace, run the workload inside it, always remove it."""
    ns = f"dgfs-bench-{os.getpid()}"
    harness.run(["ip", "netns", "add", ns])
    try:
        inside = ["ip", "netns", "exec", ns]
        harness.run([*inside, "ip", "link", "set", "lo", "mtu", "1500", "up"])
        harness.run(
            [*inside, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", args.rate,
             "burst", "256kb", "latency", "50ms"]
        )  # fmt: skip
        cmd = [*inside, sys.executable, __file__, "--inside", *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        sys.stdout.write(proc.stdout)
        return proc.returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def inside(args: argparse.Namespace) -> int:
    """In the namespace: one server, each system copies the series, timed until stored."""
    ns = argparse.Namespace(quick=args.quick, tmp=None, keep=args.keep, profile=args.profile)
    bench = harness.Bench(ns)
    rows = []
    try:
        bench.start()
        names = tuple(n for n in args.series.split(",") if n)
        series = harness.fetch_series(args.quick, names) + random_series(bench, args.random)
        wanted = [n for n in args.systems.split(",") if n]
        for label, system, extra in [s for s in SYSTEMS if not wanted or s[0] in wanted]:
            bucket = bench.bucket(f"slow-{label}")
            m = bench.mount(system, bucket, f"slow-{label}", extra) if system else None
            for name, paths in series:
                orig = sum(p.stat().st_size for p in paths)
                started = time.perf_counter()
                copy(bench, label, m, bucket, name, paths, args.per_file)
                bench.wait_objects(bucket, f"{name}/", len(paths), timeout=3600)
                seconds = time.perf_counter() - started
                rows.append(
                    {
                        "case": f"{name} cp {len(paths)} versions @{args.rate}",
                        "system": label,
                        "seconds": seconds,
                        "nbytes": orig,
                        "nfiles": len(paths),
                        "stored": bench.stored(bucket, f"{name}/"),
                        "original": orig,
                    }
                )
                harness.log(f"  slowlink | {name} | {label}: {seconds:.1f}s")
            if m is not None:
                m.umount()
            bench.empty_bucket(bucket)
    finally:
        bench.close()
    for tag, lines in bench.profiles:
        harness.log(f"profile of the dgfs daemon mounted as {tag}:\n" + "\n".join(lines))
    print(json.dumps(rows))
    return 0


def random_series(bench, count: int) -> list[tuple[str, list[Path]]]:
    """`count` random 8 MiB files named as versions of one artefact (incompressible)."""
    if not count:
        return []
    d = bench.tmp / "random-series"
    d.mkdir()
    paths = [d / f"blob-1.0.{i}.bin" for i in range(count)]
    for p in paths:
        harness.make_random_file(p, 8 * harness.MiB)
    return [("random", paths)]


def copy(bench, label: str, m, bucket: str, name: str, paths: list[Path], per_file: bool) -> None:
    if m is not None:
        (m.path / name).mkdir()
        for group in [[p] for p in paths] if per_file else [paths]:
            harness.run(["cp", *group, m.path / name])
    elif label == "boto3":
        for p in paths:
            bench.s3.upload_file(str(p), bucket, f"{name}/{p.name}")
    else:
        for p in paths:
            harness.run(
                [harness.DELTAGLIDER, "cp", p, f"s3://{bucket}/{name}/{p.name}"], env=bench.env
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", default="50mbit", help="tbf rate of the namespace's loopback")
    ap.add_argument("--systems", default="", help="labels to run (default: all)")
    ap.add_argument("--series", default="", help="release series to copy (default: all)")
    ap.add_argument("--random", type=int, default=0, help="also N random 8 MiB files")
    ap.add_argument("--per-file", action="store_true", help="one cp per file")
    ap.add_argument("--profile", action="store_true", help="sample dgfs daemons with py-spy")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (profiles, logs)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    return inside(args) if args.inside else outside(args)


if __name__ == "__main__":
    sys.exit(main())
