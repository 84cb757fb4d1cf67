#!/usr/bin/env python3
"""Does the directory index pay? Cold `ls -l` of N files, fresh mount, empty cache dir.

    .venv/bin/python scripts/bench/dirindex_bench.py [--files 1000] [--repeat 3]

Uses the harness of scripts/bench/run.py (private ministack server whose DEBUG log counts the
S3 requests per bucket; rclone from .venv/bin/rclone, see run.sh). Rows: dgfs with the index,
dgfs --no-dir-index (same objects), rclone mount default and --use-server-modtime (its own
bucket, populated through rclone). Also reports what writing the index cost at unmount.
`--direct-populate` (for 10k files: rsync through a mount takes long on a small machine) PUTs
the files with boto3 instead, with dgfs's / rclone's attribute metadata, and lets one dgfs
mount list them once, so that its index is written as a cold reader writes it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness  # noqa: E402

SYSTEMS = {
    "dgfs (index)": ("dgfs", ("--metadata-ttl", "60")),
    "dgfs --no-dir-index": ("dgfs", ("--metadata-ttl", "60", "--no-dir-index")),
    "rclone": ("rclone", ()),
    "rclone --use-server-modtime": ("rclone", ("--use-server-modtime",)),
}


def populate(b: harness.Bench, system: str, bucket: str, src: Path, n: int) -> None:
    m = b.mount(system, bucket, f"fill-{system}", ())
    harness.run(["rsync", "-a", f"{src}/", f"{m.path}/d/"])
    m.settle("d/", n)
    offset = b.log_offset()
    m.umount()
    harness.log(f"  {system}: requests at unmount {dict(b.requests_since(offset, bucket))}")


def put_direct(b: harness.Bench, dgfs_bucket: str, rclone_bucket: str, src: Path) -> None:
    """PUT every file twice: as dgfs writes a direct file, and as rclone does (mtime)."""

    def put(path: Path) -> None:
        data, st = path.read_bytes(), path.stat()
        key = f"d/{path.name}"
        dgfs_meta = {
            "dg-tool": "dgfs/bench",
            "dg-original-name": path.name,
            "dg-file-sha256": hashlib.sha256(data).hexdigest(),
            "dg-file-size": str(len(data)),
            "dg-compression": "none",
            "dgfs-mode": str(st.st_mode),
            "dgfs-uid": str(st.st_uid),
            "dgfs-gid": str(st.st_gid),
            "dgfs-mtime": str(st.st_mtime_ns),
        }
        b.s3.put_object(Bucket=dgfs_bucket, Key=key, Body=data, Metadata=dgfs_meta)
        rclone_meta = {"mtime": f"{st.st_mtime_ns / 1e9:.9f}"}
        b.s3.put_object(Bucket=rclone_bucket, Key=key, Body=data, Metadata=rclone_meta)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sorted(src.iterdir())))
    m = b.mount("dgfs", dgfs_bucket, "first-reader", ("--metadata-ttl", "60"))
    harness.run(["ls", "-l", m.path / "d"])
    offset = b.log_offset()
    m.umount()
    harness.log(
        f"  first reader: requests at unmount {dict(b.requests_since(offset, dgfs_bucket))}"
    )


def cold_ls(b: harness.Bench, label: str, bucket: str, n: int, repeat: int) -> None:
    system, extra = SYSTEMS[label]
    times, reqs, warm = [], [], []
    for i in range(repeat):
        m = b.mount(system, bucket, f"ls-{i}", extra)  # fresh mount, empty cache dir
        offset = b.log_offset()
        t, _ = harness.tcmd(["ls", "-l", m.path / "d"])
        reqs.append(dict(b.requests_since(offset, bucket)))
        times.append(t)
        warm.append(harness.tcmd(["ls", "-l", m.path / "d"])[0])
        m.umount()
    runs = ", ".join(f"{t:.3f}" for t in times)
    print(
        f"{label:28s} cold {statistics.median(times):6.3f}s (runs {runs})"
        f"  warm {statistics.median(warm):6.3f}s  requests {reqs[-1]}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--direct-populate", action="store_true", help="PUT with boto3 (see above)")
    args = ap.parse_args()
    args.quick = False
    b = harness.Bench(args)
    try:
        b.start()
        src = b.tmp / "src"
        harness.make_meta_dir(src, args.files, args.files)
        dgfs_bucket, rclone_bucket = b.bucket("idx-dgfs"), b.bucket("idx-rclone")
        if args.direct_populate:
            put_direct(b, dgfs_bucket, rclone_bucket, src)
        else:
            populate(b, "dgfs", dgfs_bucket, src, args.files)
            populate(b, "rclone", rclone_bucket, src, args.files)
        print(f"cold ls -l of {args.files} files, median of {args.repeat} fresh mounts:")
        for label, (system, _) in SYSTEMS.items():
            cold_ls(
                b,
                label,
                dgfs_bucket if system == "dgfs" else rclone_bucket,
                args.files,
                args.repeat,
            )
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
