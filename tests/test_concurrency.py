"""Concurrency: two mounts of one bucket, racing first writers, same-file writes, parallel I/O.

Each mount gets its own cache dir (two machines), so nothing is shared but the bucket.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from core import layout
from tests.datagen import random_bytes, version_series, write
from tests.mounting import DGFS

TTL_WAIT = 1.5  # mounts use --metadata-ttl 1
pytestmark = pytest.mark.timeout(240)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def two_mounts(mounter, bucket, tmp_path):
    a = mounter(bucket, "a", "--cache-dir", str(tmp_path / "cache-a"))
    b = mounter(bucket, "b", "--cache-dir", str(tmp_path / "cache-b"))
    return a, b


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def run_together(*jobs):
    """Start the callables at one barrier; re-raise the first exception; return results."""
    barrier = threading.Barrier(len(jobs))

    def go(job):
        barrier.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result() for f in [pool.submit(go, job) for job in jobs]]


def write_all(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (root / key).write_bytes(data)


def s3_requests(mountpoint: Path) -> dict:
    out = subprocess.run(
        [*DGFS, "status", str(mountpoint), "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["s3_requests"]


def test_concurrent_first_writers_agree_on_one_reference(
    mounter, bucket, objectstore, deltastore, tmp_path
):
    a, b = two_mounts(mounter, bucket, tmp_path)
    versions = version_series(12, 300_000, seed=21)
    for rnd in range(2):
        d = f"race{rnd}"
        (a.path / d).mkdir()
        wait_for(lambda d=d: (b.path / d).is_dir())
        mine = {f"{d}/a-{i}.zip": versions[4 * rnd + i] for i in range(2)}
        theirs = {f"{d}/b-{i}.zip": versions[4 * rnd + 2 + i] for i in range(2)}

        run_together(partial(write_all, a.path, mine), partial(write_all, b.path, theirs))
        written = {**mine, **theirs}
        ref_key = layout.reference_key(d)
        ref = objectstore.get_bytes(ref_key)
        ref_meta = objectstore.head(ref_key).metadata or {}
        assert sha(ref) == ref_meta["dg-file-sha256"]
        assert ref in (mine[f"{d}/a-0.zip"], theirs[f"{d}/b-0.zip"]), "reference is no first file"
        for key in written:
            record = deltastore.stat(key)
            if record.kind == layout.Kind.DELTA:
                assert record.ref_sha256 == sha(ref), f"{key} encoded against another reference"
        time.sleep(TTL_WAIT)
        for root in (a.path, b.path):
            for key, data in written.items():
                assert (root / key).read_bytes() == data, f"{root.name}:{key}"
    result = subprocess.run([*DGFS, "verify", f"s3://{bucket}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reader_in_other_mount_sees_new_content_after_ttl(mounter, bucket, tmp_path):
    a, b = two_mounts(mounter, bucket, tmp_path)
    old, new = version_series(2, 200_000, seed=22)
    (a.path / "shared").mkdir()
    (a.path / "shared" / "app.zip").write_bytes(old)
    time.sleep(TTL_WAIT)
    assert (b.path / "shared" / "app.zip").read_bytes() == old
    (a.path / "shared" / "app.zip").write_bytes(new)
    time.sleep(TTL_WAIT)
    assert (b.path / "shared" / "app.zip").stat().st_size == len(new)
    assert (b.path / "shared" / "app.zip").read_bytes() == new
    with open(b.path / "shared" / "app.zip", "rb") as f:  # open after the change: new bytes
        assert hashlib.sha256(f.read()).hexdigest() == sha(new)


def test_same_file_written_from_both_mounts_is_one_complete_version(mounter, bucket, tmp_path):
    a, b = two_mounts(mounter, bucket, tmp_path)
    (a.path / "same").mkdir()
    wait_for(lambda: (b.path / "same").is_dir())
    base = random_bytes(1_500_000, 23)
    (a.path / "same" / "base.bin").write_bytes(base)  # gives the dir a reference
    outcomes = []
    for rnd in range(3):
        va = bytes(base[:1000]) + random_bytes(1_499_000, 100 + rnd)
        vb = random_bytes(1_000, 200 + rnd) + bytes(base[1000:])
        name = f"same/f{rnd}.bin"
        run_together(
            lambda name=name, va=va: (a.path / name).write_bytes(va),
            lambda name=name, vb=vb: (b.path / name).write_bytes(vb),
        )
        time.sleep(TTL_WAIT)
        got_a = (a.path / name).read_bytes()
        got_b = (b.path / name).read_bytes()
        for got in (got_a, got_b):
            assert got in (va, vb), f"{name}: a mix of both versions ({len(got)} bytes)"
        assert got_a == got_b, f"{name}: the two mounts disagree after the TTL"
        outcomes.append("a" if got_a == va else "b")
    fresh = mounter(bucket, "fresh", "--cache-dir", str(tmp_path / "cache-fresh"))
    for rnd, winner in enumerate(outcomes):
        got = (fresh.path / f"same/f{rnd}.bin").read_bytes()
        assert got == (a.path / f"same/f{rnd}.bin").read_bytes(), winner
    result = subprocess.run([*DGFS, "verify", f"s3://{bucket}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parallel_cp_into_one_mount(mounter, bucket, tmp_path):
    m = mounter(bucket)
    versions = version_series(8, 400_000, seed=24)
    src = tmp_path / "src"
    for i, data in enumerate(versions):
        write(src / f"app-{i}.zip", data)
    (m.path / "par").mkdir()
    procs = [
        subprocess.Popen(["cp", str(src / f"app-{i}.zip"), str(m.path / "par" / f"app-{i}.zip")])
        for i in range(8)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    for i, data in enumerate(versions):
        assert (m.path / "par" / f"app-{i}.zip").read_bytes() == data
    assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh", "--cache-dir", str(tmp_path / "cache-fresh"))
    for i, data in enumerate(versions):
        assert (fresh.path / "par" / f"app-{i}.zip").read_bytes() == data
    result = subprocess.run([*DGFS, "verify", f"s3://{bucket}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parallel_reads_of_one_delta_reconstruct_once(mounter, bucket, deltastore, tmp_path):
    versions = version_series(3, 2_000_000, seed=25)
    src = tmp_path / "src"
    for i, data in enumerate(versions):
        src.write_bytes(data)
        deltastore.put(src, f"rd/app-{i}.zip")
    assert deltastore.stat("rd/app-2.zip").kind == layout.Kind.DELTA
    m = mounter(bucket, "fresh", "--cache-dir", str(tmp_path / "cache-fresh"))
    target = m.path / "rd" / "app-2.zip"
    target.stat()  # listing and HEAD before counting
    before = s3_requests(m.path).get("get", 0)
    results = run_together(*[target.read_bytes for _ in range(8)])
    assert all(r == versions[2] for r in results)
    gets = s3_requests(m.path).get("get", 0) - before
    assert gets <= 2, f"{gets} GETs for one delta read by 8 threads (delta + reference expected)"
