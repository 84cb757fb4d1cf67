#!/usr/bin/env python3
"""A/B micro-bench of two dgfs source trees on one local S3 server, interleaved.

    python scripts/bench/ab.py TREE_A TREE_B [--rounds N] [--series N] [--only writes,reads]

Each round mounts each tree in turn (fresh bucket, fresh cache) and times: `cp` of N
botocore wheels one cp per file (compressible series), `cp` of 8 random 8 MiB files
(incompressible), a cold `find` over a 1,000-file 3-level tree written behind the mount (fresh
mount, empty cache), and reads of a 256 MiB random file: first (cold, cache empty), second
with the page cache dropped (served by dgfs's cache), third without dropping (kernel page
cache if dgfs lets it). Machine load is printed with each round (2 shared cores: noisy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from dgfs import localserver  # noqa: E402

PY = "/work/main/.venv/bin/python"
MiB = 2**20
SERIES = ROOT.parent / "main" / "data" / "bench-cache" / "botocore"


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def series(n: int) -> list[Path]:
    if not SERIES.exists():
        return []
    out = []
    for i in range(n):
        out += sorted((SERIES / f"1.35.{i}").glob("*.whl"))
    return out


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def one(tree: Path, env, s3, tag: str, work: Path, args, data) -> dict:
    bucket = f"ab-{tag}-{time.monotonic_ns()}"[:60]
    s3.create_bucket(Bucket=bucket)
    mp = work / "mnt" / tag
    mp.mkdir(parents=True, exist_ok=True)
    cache = work / f"cache-{bucket}"
    cmd = [PY, "-m", "dgfs.cli", "mount", bucket, str(mp), "--cache-dir", str(cache)]
    cmd += ["--metadata-ttl", str(args.ttl), "--log-file", str(work / f"{bucket}.log")]
    subprocess.run(cmd, env=env, cwd=tree, check=True, timeout=120)
    res = {}
    try:
        if "writes" in args.only:
            (mp / "s").mkdir()
            res["series cp"] = timed(
                lambda: [subprocess.run(["cp", p, mp / "s"], check=True) for p in data["series"]]
            )
            objs = s3.list_objects_v2(Bucket=bucket, Prefix="s/").get("Contents", [])
            res["series stored"] = sum(o["Size"] for o in objs) / data["series_bytes"]
            (mp / "r").mkdir()
            res["random cp"] = timed(
                lambda: [subprocess.run(["cp", p, mp / "r"], check=True) for p in data["random"]]
            )
        if "listing" in args.only:
            for i in range(1000):  # 10 x 10 directories of 10 files, written behind the mount
                s3.put_object(
                    Bucket=bucket, Key=f"t/a{i // 100}/b{i // 10 % 10}/f{i % 10}", Body=b"x"
                )
            subprocess.run([PY, "-m", "dgfs.cli", "umount", str(mp)], env=env, cwd=tree, check=True)
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            subprocess.run(cmd, env=env, cwd=tree, check=True, timeout=120)
            res["find cold"] = timed(
                lambda: subprocess.run(["find", mp / "t"], check=True, capture_output=True)
            )
        if "reads" in args.only:
            subprocess.run(["cp", data["big"], mp / "big.bin"], check=True)
            subprocess.run([PY, "-m", "dgfs.cli", "umount", str(mp)], env=env, cwd=tree, check=True)
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            subprocess.run(cmd, env=env, cwd=tree, check=True, timeout=120)
            drop_caches()
            res["read cold"] = timed(lambda: read_all(mp / "big.bin"))
            drop_caches()
            res["read cached"] = timed(lambda: read_all(mp / "big.bin"))
            res["read again"] = timed(lambda: read_all(mp / "big.bin"))
            drop_caches()
            res["read local disk"] = timed(lambda: read_all(data["big"]))
    finally:
        subprocess.run([PY, "-m", "dgfs.cli", "umount", str(mp)], env=env, cwd=tree)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs=2, type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--big", type=int, default=256, help="MiB")
    ap.add_argument("--only", default="writes,reads")
    ap.add_argument("--ttl", type=float, default=1.0, help="--metadata-ttl of the mounts")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dgfs-ab-"))
    server = localserver.start(work / "server")
    env = {**os.environ, **server.env()}
    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        **{
            "aws_access_key_id": localserver.LOCAL_ACCESS_KEY,
            "aws_secret_access_key": localserver.LOCAL_SECRET_KEY,
            "region_name": localserver.LOCAL_REGION,
        },
    )
    src = work / "src"
    src.mkdir()
    data = {"series": series(args.series), "random": [], "big": src / "big.bin"}
    data["series_bytes"] = sum(p.stat().st_size for p in data["series"]) or 1
    for i in range(8):
        p = src / f"rand{i}.bin"
        p.write_bytes(os.urandom(8 * MiB))
        data["random"].append(p)
    with open(data["big"], "wb") as f:
        for _ in range(args.big):
            f.write(os.urandom(MiB))
    print(f"series: {len(data['series'])} files, {data['series_bytes'] / MiB:.1f} MiB")
    try:
        for r in range(args.rounds):
            for label, tree in zip("AB", args.trees, strict=True):
                load = os.getloadavg()[0]
                res = one(tree.resolve(), env, s3, f"{label.lower()}{r}", work, args, data)
                cells = "  ".join(f"{k}={v:.2f}" for k, v in res.items())
                print(f"round {r} {label} (load {load:.2f}): {cells}", flush=True)
    finally:
        localserver.kill(server.pid)
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
