#!/usr/bin/env python3
"""Sync vs async write-back vs s3fs: a compressible series written one `cp` per file.

    python scripts/bench/writeback_bench.py [--series 10] [--rounds 2] [--systems a,b,c]

Systems: `dgfs-sync` (`--write-back sync`), `dgfs-async` (`--write-back async`) and `s3fs`
(if installed), each on a fresh bucket of one local S3 server with a fresh cache. Timed: the
`cp` loop, then the unmount (which, for async, waits for every background upload); "stored"
is the sum, after which every file is checked to be in the bucket. Rounds interleave the
systems; the 1-minute load is printed with each (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3  # noqa: E402
from ab import PY, ROOT, series  # noqa: E402

from dgfs import localserver  # noqa: E402

MiB = 2**20


def mount(system: str, bucket: str, mp: Path, work: Path, endpoint: str, env: dict):
    """Mount one system; returns the s3fs process (None for dgfs)."""
    if system.startswith("dgfs"):
        mode = system.removeprefix("dgfs-")
        cmd = [PY, "-m", "dgfs.cli", "mount", bucket, str(mp), "--cache-dir"]
        cmd += [str(work / f"cache-{bucket}"), "--log-file", str(work / f"{bucket}.log")]
        cmd += ["--metadata-ttl", "1", "--write-back", mode]
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120)
        return None
    passwd = work / "s3fs.passwd"
    passwd.write_text(f"{localserver.LOCAL_ACCESS_KEY}:{localserver.LOCAL_SECRET_KEY}\n")
    passwd.chmod(0o600)
    opts = f"url={endpoint},use_path_request_style,passwd_file={passwd},dbglevel=err"
    proc = subprocess.Popen(
        ["s3fs", bucket, str(mp), "-f", "-o", opts],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("s3fs mount failed")
        time.sleep(0.05)
    return proc


def umount(system: str, mp: Path, proc, env: dict) -> None:
    if system.startswith("dgfs"):
        subprocess.run([PY, "-m", "dgfs.cli", "umount", str(mp)], env=env, cwd=ROOT, check=True)
        return
    subprocess.run(["umount", str(mp)], check=True)
    proc.wait(timeout=600)


def one(system: str, files: list[Path], s3, endpoint: str, work: Path, env: dict) -> dict:
    bucket = f"wb-{system}-{time.monotonic_ns()}"[:60]
    s3.create_bucket(Bucket=bucket)
    mp = work / "mnt" / bucket
    mp.mkdir(parents=True)
    proc = mount(system, bucket, mp, work, endpoint, env)
    (mp / "s").mkdir()
    start = time.monotonic()
    for path in files:
        subprocess.run(["cp", str(path), str(mp / "s")], check=True)
    cp_done = time.monotonic()
    umount(system, mp, proc, env)
    end = time.monotonic()
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="s/").get("Contents", [])
    keys = {o["Key"].removesuffix(".delta") for o in objects}
    missing = [p.name for p in files if f"s/{p.name}" not in keys]
    if missing:
        raise RuntimeError(f"{system}: not in S3 after unmount: {missing}")
    source = sum(p.stat().st_size for p in files)
    stored = sum(o["Size"] for o in objects)
    return {"cp": cp_done - start, "umount": end - cp_done, "stored": end - start,
            "ratio": stored / source}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--systems", default="dgfs-sync,dgfs-async,s3fs")
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s != "s3fs" or shutil.which("s3fs")]
    files = series(args.series)
    if not files:
        raise SystemExit("no botocore wheels in data/bench-cache/botocore")
    size = sum(p.stat().st_size for p in files) / MiB
    print(f"series: {len(files)} wheels, {size:.1f} MiB; systems: {', '.join(systems)}")
    work = Path(tempfile.mkdtemp(prefix="dgfs-wb-"))
    server = localserver.start(work / "server")
    env = {**os.environ, **server.env()}
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=localserver.LOCAL_ACCESS_KEY,
        aws_secret_access_key=localserver.LOCAL_SECRET_KEY,
        region_name=localserver.LOCAL_REGION,
    )
    try:
        for r in range(args.rounds):
            for system in systems:
                load = os.getloadavg()[0]
                res = one(system, files, s3, server.endpoint_url, work, env)
                cells = "  ".join(f"{k}={v:.2f}" for k, v in res.items())
                print(f"round {r} {system} (load {load:.2f}): {cells}", flush=True)
    finally:
        localserver.kill(server.pid)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
