#!/usr/bin/env python3
"""Issue #17's goal rows in one run: dgfs, s3fs and rclone side by side on one local server.

    .venv/bin/python scripts/bench/goals.py [--only slowlink,series,small,big,find,memory]
        [--big-mib 1024] [--mem-mib 2048] [--random 10] [--systems dgfs,s3fs,rclone]
        [--profile] [--keep]

Workloads (harness: scripts/bench/run.py; shaped link: scripts/bench/slowlink.py):
- slowlink: 10 botocore wheels and `--random` random 8 MiB files, one `cp` per file, over a
  50 Mbit/s link, timed until every object is stored;
- series: the same botocore wheels on loopback, one `cp` per file;
- small: 1,000 × 64 KiB random files (`cp -r`), then a cold read on a fresh mount;
- big: one random file (`--big-mib`): write, cold read (fresh mount, empty cache, page cache
  dropped), cached read (page cache dropped, the FS's own cache kept), second read (page
  cache kept), the source on local disk after a drop; peak RSS of each mount's processes;
- find: cold `find -type f` over a 1,000-file 3-level tree written through each mount;
- memory: dgfs writes a `--mem-mib` random reference, then a copy with 8 bytes changed every
  64 MiB, with the default source window and with `--max-source-window 1024` (the former
  cap): peak RSS of daemon + xdelta3 and the delta's stored bytes.
Prints every row, then one table: goal | dgfs | s3fs | rclone | ratio | verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import run as harness
from run import MiB, Row, drop_caches, tcmd, tread

PEERS = ("dgfs", "s3fs", "rclone")
SLOW = "@50mbit"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def add(b: harness.Bench, workload: str, case: str, system: str, seconds: float, **kw) -> Row:
    extra = {"load": load(), **kw.pop("extra", {})}
    return b.add(Row(workload, case, system, seconds, extra=extra, **kw))


def wl_slowlink(b: harness.Bench, args: argparse.Namespace) -> None:
    harness.fetch_series(False, ("botocore",))
    cmd = [harness.PY, Path(__file__).parent / "slowlink.py", "--systems", ",".join(args.systems)]
    cmd += ["--series", "botocore", "--random", str(args.random), "--per-file"]
    cmd += [f for f, on in (("--profile", args.profile), ("--keep", args.keep)) if on]
    before = load()
    proc = harness.run(cmd, capture_output=False, stdout=subprocess.PIPE, timeout=3600)
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        name = r["case"].split(" ")[0]
        row = add(b, "slowlink", f"{name} {SLOW}", r["system"], r["seconds"], nbytes=r["nbytes"])
        row.stored, row.original = r["stored"], r["original"]
        row.extra["load_before"] = before


def wl_series(b: harness.Bench, args: argparse.Namespace) -> None:
    [(name, paths)] = harness.fetch_series(False, ("botocore",))
    for system in args.systems:
        bucket = b.bucket(f"series-{system}")
        m = b.mount(system, bucket, f"series-{system}")
        (m.path / name).mkdir()
        t = time.perf_counter()
        for p in paths:
            harness.run(["cp", p, m.path / name])
        m.settle(f"{name}/", len(paths))
        t = time.perf_counter() - t
        row = add(b, "series", name, system, t, nbytes=sum(p.stat().st_size for p in paths))
        row.stored, row.original = b.stored(bucket, f"{name}/"), row.nbytes
        m.umount()
        b.empty_bucket(bucket)


def wl_small(b: harness.Bench, args: argparse.Namespace) -> None:
    src = b.tmp / "small"
    src.mkdir()
    for i in range(1000):
        (src / f"f{i:05d}.dat").write_bytes(os.urandom(64 * 1024))
    names = sorted(p.name for p in src.iterdir())
    for system in args.systems:
        bucket = b.bucket(f"small-{system}")
        m = b.mount(system, bucket, f"small-{system}")
        drop_caches()
        t, _ = tcmd(["cp", "-r", src, m.path / "small"], m, ("small/", 1000))
        add(b, "small", "1000 x 64 KiB write", system, t, nbytes=1000 * 64 * 1024)
        m.umount()
        m = b.mount(system, bucket, f"small-{system}")
        drop_caches()
        t = tread([m.path / "small" / n for n in names])
        add(b, "small", "1000 x 64 KiB read cold", system, t, nbytes=1000 * 64 * 1024)
        m.umount()
        b.empty_bucket(bucket)
    shutil.rmtree(src)


def wl_big(b: harness.Bench, args: argparse.Namespace) -> None:
    size = args.big_mib * MiB
    src = b.tmp / "big.bin"
    harness.make_random_file(src, size)
    case = f"{args.big_mib} MiB"
    for system in args.systems:
        bucket = b.bucket(f"big-{system}")
        m = b.mount(system, bucket, f"big-{system}")
        sampler = harness.RssSampler(m.pid)
        sampler.start()
        drop_caches()
        t, _ = tcmd(["cp", src, m.path / "big.bin"], m, ("big.bin", 1))
        add(b, "big", f"{case} write", system, t, nbytes=size)
        sampler.stop.set()
        sampler.join()
        peak = sampler.peak_tree
        m.umount()
        m = b.mount(system, bucket, f"big-{system}")  # fresh mount, empty cache
        sampler = harness.RssSampler(m.pid)
        sampler.start()
        for read in ("cold", "cached", "second"):
            if read != "second":
                drop_caches()
            add(b, "big", f"{case} read {read}", system, tread([m.path / "big.bin"]), nbytes=size)
        sampler.stop.set()
        sampler.join()
        peak = max(peak, sampler.peak_tree)
        add(b, "big", "peak RSS (write + reads)", system, 0.0, extra={"peak_MiB": peak // MiB})
        m.umount()
        b.empty_bucket(bucket)
    drop_caches()
    add(b, "big", f"{case} read cached", "local disk", tread([src]), nbytes=size)
    add(b, "big", f"{case} read second", "local disk", tread([src]), nbytes=size)
    src.unlink()


def wl_find(b: harness.Bench, args: argparse.Namespace) -> None:
    src = b.tmp / "tree"
    n = harness.make_meta_tree(src, 10, 10)
    for system in args.systems:
        bucket = b.bucket(f"find-{system}")
        m = b.mount(system, bucket, f"find-{system}")
        tcmd(["cp", "-r", src, m.path / "tree"], m, ("tree/", n))
        m.umount()
        m = b.mount(system, bucket, f"find-{system}")
        drop_caches()
        t, proc = tcmd(["bash", "-c", f"find {m.path}/tree -type f | wc -l"])
        add(b, "find", f"cold find, {n} files, 3 levels", system, t, extra={"found": proc.stdout})
        m.umount()
        b.empty_bucket(bucket)
    shutil.rmtree(src)


def wl_memory(b: harness.Bench, args: argparse.Namespace) -> None:
    size = args.mem_mib * MiB
    ref, target = b.tmp / "big-1.0.0.bin", b.tmp / "big-1.0.1.bin"
    harness.make_random_file(ref, size)
    shutil.copyfile(ref, target)
    with open(target, "r+b") as f:
        for at in range(0, size, 64 * MiB):
            f.seek(at + 4096)
            f.write(b"changed!")
    for label, extra in (("default", ()), ("window 1024 MB", ("--max-source-window", "1024"))):
        bucket = b.bucket(f"mem-{label}")
        m = b.mount("dgfs", bucket, f"mem-{label}", extra)
        for path in (ref, target):
            sampler = harness.RssSampler(m.pid)
            sampler.start()
            t, _ = tcmd(["cp", path, m.path / path.name])
            sampler.stop.set()
            sampler.join()
            stored = {o["Key"]: o["Size"] for o in b.objects(bucket)}
            row = add(b, "memory", f"cp {path.name} ({label})", "dgfs", t, nbytes=size)
            row.extra.update(peak_MiB=sampler.peak_tree // MiB, objects=stored)
        m.umount()
        b.empty_bucket(bucket)
    ref.unlink()
    target.unlink()


WORKLOADS = {
    "slowlink": wl_slowlink,
    "series": wl_series,
    "small": wl_small,
    "big": wl_big,
    "find": wl_find,
    "memory": wl_memory,
}


def secs(rows: list[Row], workload: str, case: str, system: str) -> float | None:
    found = [r for r in rows if (r.workload, r.case, r.system) == (workload, case, system)]
    return found[0].seconds if found else None


def goals(rows: list[Row], args: argparse.Namespace) -> list[list[str]]:
    """One line per goal of issue #17: its rows, the ratio that decides it, the verdict."""
    big = f"{args.big_mib} MiB"
    out = []

    def line(goal: str, workload: str, case: str, ratio_of, limit: float | None, le=True):
        cells = {s: secs(rows, workload, case, s) for s in (*PEERS, "local disk")}
        shown = [f"{cells[s]:.2f} s" if cells[s] is not None else "not run" for s in PEERS]
        try:
            ratio = ratio_of(cells)
        except (TypeError, ZeroDivisionError):
            out.append([goal, *shown, "", "not measured"])
            return
        met = limit is not None and (ratio <= limit if le else ratio >= limit)
        verdict = "info" if limit is None else "met" if met else "missed"
        out.append([goal, *shown, f"{ratio:.2f}", verdict])

    line(
        "50 Mbit/s, botocore series: ≤ 0.33× s3fs and rclone (max of both)",
        "slowlink",
        f"botocore {SLOW}",
        lambda c: max(c["dgfs"] / c["s3fs"], c["dgfs"] / c["rclone"]),
        0.33,
    )
    line(
        "50 Mbit/s, random series: ≤ 1.05× s3fs",
        "slowlink",
        f"random {SLOW}",
        lambda c: c["dgfs"] / c["s3fs"],
        1.05,
    )
    line("loopback, botocore series: ≤ 2× s3fs", "series", "botocore", _vs("s3fs"), 2.0)
    line("1,000 × 64 KiB write: ≥ s3fs speed", "small", "1000 x 64 KiB write", _vs("s3fs"), 1.0)
    line(
        f"{big}, page cache dropped, FS cache kept: ≥ 0.8× local disk (speed)",
        "big",
        f"{big} read cached",
        lambda c: c["local disk"] / c["dgfs"],
        0.8,
        le=False,
    )
    line(
        f"{big}, second read (page cache kept): speed vs local page cache",
        "big",
        f"{big} read second",
        lambda c: c["local disk"] / c["dgfs"],
        None,
    )
    line(f"cold {big} read: ≥ rclone", "big", f"{big} read cold", _vs("rclone"), 1.0)
    line(
        "1,000 × 64 KiB cold read: ≥ 0.8× s3fs (speed)",
        "small",
        "1000 x 64 KiB read cold",
        lambda c: c["s3fs"] / c["dgfs"],
        0.8,
        le=False,
    )
    find = "cold find, 1000 files, 3 levels"
    line("cold find, 1,000 files: ≤ rclone", "find", find, _vs("rclone"), 1.0)
    peaks = {r.system: r.extra["peak_MiB"] for r in rows if r.case.startswith("peak RSS")}
    if peaks:
        cells = [f"{peaks[s] * MiB / 1e6:.0f} MB" if s in peaks else "not run" for s in PEERS]
        out.append([f"peak RSS, {big} write + reads (all processes)", *cells, "", "info"])
    mem = [r for r in rows if r.workload == "memory" and r.case.endswith("(default)")]
    goal = f"daemon + children ≤ 600 MB ({args.mem_mib} MiB file, default)"
    if mem:
        peak = max(r.extra["peak_MiB"] for r in mem) * MiB / 1e6
        verdict = "met" if peak <= 600 else "missed"
        out.append([goal, f"{peak:.0f} MB", "", "", f"{peak / 600:.2f}", verdict])
    else:
        out.append([goal, "not run", "", "", "", "not measured"])
    return out


def _vs(peer: str):
    return lambda c: c["dgfs"] / c[peer]


def markdown(lines: list[list[str]]) -> str:
    head = ["goal", "dgfs", "s3fs", "rclone", "ratio", "verdict"]
    rows = [head, ["---"] * len(head), *lines]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--mem-mib", type=int, default=2048)
    ap.add_argument("--systems", default=",".join(PEERS), help="mounts to measure")
    ap.add_argument("--random", type=int, default=10, help="random 8 MiB files at 50 Mbit/s")
    ap.add_argument("--profile", action="store_true", help="sample dgfs daemons with py-spy")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) at exit")
    ap.add_argument("--tmp", default=None, help="parent of the work dir (default: $TMPDIR)")
    args = ap.parse_args()
    args.quick = False
    args.systems = [s for s in args.systems.split(",") if s in PEERS]
    b = harness.Bench(args)
    started = time.monotonic()
    try:
        b.start()
        for name in [w for w in WORKLOADS if w in args.only.split(",")]:
            harness.log(f"workload {name} (load {load()})")
            WORKLOADS[name](b, args)
    finally:
        b.close()
    print(f"goals run, {time.monotonic() - started:.0f} s: {json.dumps(harness.machine())}")
    print(harness.table(b.rows))
    for r in b.rows:
        print(f"  {r.workload} | {r.case} | {r.system}: {json.dumps(r.extra)}")
    for tag, lines in b.profiles:
        print(f"\nprofile of the dgfs daemon mounted as {tag}:\n" + "\n".join(lines))
    print()
    print(markdown(goals(b.rows, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
