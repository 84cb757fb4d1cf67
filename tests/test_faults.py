"""Fault injection between dgfs and S3: no acknowledged byte is ever lost.

Each test mounts through tests/faultproxy.py (5xx/SlowDown, connection resets, stalls,
truncated responses), writes a version series file by file recording which close() succeeded,
then checks through a fresh mount on the direct endpoint (its own cache) that every such file
is byte-identical, that `dgfs verify` passes and that `reference.bin` is the first file's bytes.

DG_RELIABILITY_LONG=1 writes more files over more rounds; DG_RELIABILITY_REPORT=FILE appends
one JSON line per scenario (faults injected, files verified, bytes lost) for scripts/reliability.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core import layout
from tests.ci import skip_unless_ci
from tests.datagen import random_bytes, version_series
from tests.faultproxy import FaultProxy, Rule
from tests.mounting import DGFS, mount_status

LONG = os.environ.get("DG_RELIABILITY_LONG") == "1"
COUNT = 60 if LONG else 20
ROUNDS = 3 if LONG else 1
SIZE = 200_000
pytestmark = pytest.mark.timeout(2400 if LONG else 300)


def report(**fields) -> None:
    """One JSON line for scripts/reliability (no-op unless DG_RELIABILITY_REPORT is set)."""
    path = os.environ.get("DG_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields, sort_keys=True) + "\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(root: Path, files: dict[str, bytes]) -> dict[str, int | None]:
    """open/write/close each file in order; name → None if close succeeded, else the errno."""
    outcome: dict[str, int | None] = {}
    for name, data in files.items():
        try:
            with open(root / name, "wb") as f:
                f.write(data)
            outcome[name] = None
        except OSError as exc:
            outcome[name] = exc.errno
    return outcome


def dgfs_verify(bucket: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DGFS, "verify", f"s3://{bucket}"], capture_output=True, text=True, timeout=300
    )


def check_reference(objectstore, prefix: str, files: dict[str, bytes]) -> None:
    """reference.bin: its bytes match its dg-file-sha256 and are those of the file that made it."""
    key = layout.reference_key(prefix)
    body = objectstore.get_bytes(key)
    meta = objectstore.head(key).metadata or {}
    assert sha(body) == meta.get("dg-file-sha256"), f"{key}: body does not match its sha256"
    source = meta.get("dg-source-name", "")
    assert source in files, f"{key}: dg-source-name {source!r} is not a file we wrote"
    assert body == files[source], f"{key}: not the bytes of {source}"
    first = next(iter(files))
    assert source == first, f"{key} was made from {source}, not the first file {first}"


def check_no_half_objects(objectstore, prefix: str, names) -> None:
    """Exactly one stored form per file, plus the reference; nothing else under the prefix."""
    keys = sorted(
        o.key for page in objectstore.list_pages(prefix + "/", None) for o in page.objects
    )
    logical = [k[: -len(".delta")] if k.endswith(".delta") else k for k in keys]
    files = [
        k for k in logical if not k.endswith("/") and not k.endswith("/" + layout.REFERENCE_NAME)
    ]
    assert sorted(files) == sorted(f"{prefix}/{n}" for n in names), keys


# A burst of 6 failed attempts on consecutive PUTs outlasts botocore's retries (5 retries after
# the first attempt), so one close() must fail. It costs ~15 s of client backoff: CI runs it in the
# 5xx scenario only, the long mode in every scenario.
BURST = set(range(11, 17))
ALL = None  # every method
CI_METHODS = {"PUT", "GET"}


def fault_rules(kind: str) -> list[Rule]:
    methods = ALL if LONG else CI_METHODS
    burst = BURST if LONG or kind == "5xx" else set()
    if kind == "5xx":  # ~30 % of requests answered 500 InternalError or 503 SlowDown
        return [
            # the burst must meet file uploads, not a background PUT (the directory index)
            Rule("slowdown", {"PUT"}, schedule=burst, path_contains=".zip"),
            Rule("error500", methods if LONG else {"PUT"}, probability=0.15),
            Rule("slowdown", methods if LONG else {"PUT"}, probability=0.15),
        ]
    if kind == "reset":
        # PUT 1 is the conditional create of reference.bin: reset after the server stored it,
        # so the retry meets 412; resets of the response after the server acted, and in the
        # middle of an upload's body (the server sees a broken request)
        return [
            Rule("reset", {"PUT"}, schedule={1, 5, 9, *burst}),
            Rule("reset_request", {"PUT"}, schedule={3, 7}, fraction=0.5),
            Rule("reset", methods, probability=0.1 if LONG else 0.05),
            Rule("reset_request", {"PUT"}, probability=0.1 if LONG else 0.0),
        ]
    if kind == "stall":  # the server acts, the answer never comes (mount: --read-timeout 2)
        return [
            Rule("stall", {"PUT"}, schedule={1, 4, 8, *burst}, stall_seconds=3),
            Rule("stall", {"GET", "HEAD"}, schedule={3}, stall_seconds=3),
            Rule("stall", methods, probability=0.05 if LONG else 0.0, stall_seconds=3),
        ]
    if kind == "truncate":
        # PUT answers have no body: cut them after one byte (a 200 whose head is merely cut
        # short parses as success, which is right: the server stored the object)
        return [
            Rule("truncate", {"PUT"}, schedule={2, 6, 10, *burst}, fraction=0.0),
            Rule("truncate", methods - {"PUT"} if methods else {"GET", "HEAD"}, probability=0.25),
        ]
    raise ValueError(kind)


KINDS = ["5xx", "reset", "stall", "truncate"]


def upload_scenario(kind: str, upstream: str, mounter, bucket, objectstore, tmp_path) -> dict:
    """Write ROUNDS × COUNT files through a faulty proxy, then check them on a fresh mount.

    Returns what happened (for the report); assertions that cannot wait fail right here.
    """
    extra = ["--read-timeout", "2", "--connect-timeout", "2"] if kind == "stall" else []
    result = {"test": f"upload-{kind}", "files_verified": 0, "failed_closes": 0, "bytes_lost": 0}
    result["s3_requests"] = 0
    problems: list[str] = []
    with FaultProxy(upstream, seed=zlib.crc32(kind.encode())) as proxy:
        for rnd in range(ROUNDS):
            prefix = f"{kind}{rnd}"
            versions = version_series(COUNT, SIZE, seed=rnd + 1)
            files = {f"app-{i:02d}.zip": data for i, data in enumerate(versions)}
            m = mounter(
                bucket, f"{kind}-mnt{rnd}", "--endpoint-url", proxy.url, "--cache-dir",
                str(tmp_path / f"{kind}-cache{rnd}"), *extra,
            )  # fmt: skip
            (m.path / prefix).mkdir()
            proxy.set_rules(*fault_rules(kind))
            outcome = write_files(m.path / prefix, files)
            proxy.clear()
            status = mount_status(m.path)
            result["s3_requests"] += sum(status["s3_requests"].values())
            failed = {n for n, e in outcome.items() if e is not None}
            result["failed_closes"] += len(failed)
            # every failed close is an upload failure named in the log (the data is kept: the
            # daemon retries it at release, in the background and at unmount)
            log_text = m.log_text()
            for name in failed:
                assert f"upload {prefix}/{name} failed" in log_text, (kind, name, outcome)
            assert all(e == errno.EIO for e in outcome.values() if e is not None), outcome
            done = m.umount()  # the proxy passes everything now: pending uploads must succeed
            assert done.returncode == 0, done.stderr + m.log_text()[-3000:]

            fresh = mounter(
                bucket, f"{kind}-fresh{rnd}", "--cache-dir", str(tmp_path / f"{kind}-fc{rnd}")
            )
            for name, data in files.items():
                try:
                    got = (fresh.path / prefix / name).read_bytes()
                except OSError as exc:
                    got = f"<{exc}>".encode()
                if got != data:
                    acked = name not in failed
                    result["bytes_lost"] += len(data) if acked else 0
                    problems.append(
                        f"{prefix}/{name} differs (close {'ok' if acked else 'failed'})"
                    )
                else:
                    result["files_verified"] += 1
            check_reference(objectstore, prefix, files)
            check_no_half_objects(objectstore, prefix, files)
            fresh.umount()
        result["faults"] = dict(proxy.faults)
    result["problems"] = problems
    return result


def test_upload_faults_lose_no_acknowledged_byte(s3_server, mounter, bucket, objectstore, tmp_path):
    """The four fault classes, each through its own proxy and mounts, run side by side."""
    with ThreadPoolExecutor(len(KINDS)) as pool:
        futures = {
            kind: pool.submit(
                upload_scenario,
                kind,
                s3_server.endpoint_url,
                mounter,
                bucket,
                objectstore,
                tmp_path,
            )  # fmt: skip
            for kind in KINDS
        }
        errors = {}
        results = {}
        for kind, future in futures.items():
            try:
                results[kind] = future.result()
            except Exception as exc:  # report every class, then fail
                errors[kind] = exc
    for result in results.values():
        report(**result)
    verified = dgfs_verify(bucket)
    assert not errors, errors
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for kind, result in results.items():
        assert not result["problems"], (kind, result["problems"])
        assert result["bytes_lost"] == 0, result
        assert sum(result["faults"].values()) >= 3, (kind, result["faults"])
        if kind == "5xx" or LONG:  # the burst outlasts botocore's retries: a close() must fail
            assert result["failed_closes"] >= 1, f"{kind}: no close() failed: {result}"


def test_download_faults_never_return_wrong_bytes(
    s3_server, mounter, bucket, deltastore, objectstore, tmp_path
):
    versions = version_series(COUNT, SIZE, seed=5)
    files = {f"dl/app-{i:02d}.zip": data for i, data in enumerate(versions)}
    src = tmp_path / "src"
    for key, data in files.items():
        src.write_bytes(data)
        deltastore.put(src, key)
    plain = random_bytes(150_000, 9)
    objectstore.put_bytes("dl/plain.dat", plain, {})  # no sha256 to check: Content-Length only
    files["dl/plain.dat"] = plain
    outcomes = {"ok": 0, "eio": 0}
    with FaultProxy(s3_server.endpoint_url, seed=11) as proxy:
        for rnd in range(ROUNDS):
            m = mounter(
                bucket, f"mnt{rnd}", "--endpoint-url", proxy.url, "--cache-dir",
                str(tmp_path / f"cache{rnd}"),
            )  # fmt: skip
            fraction = 0.3 + 0.1 * rnd
            proxy.set_rules(
                Rule("truncate", {"GET"}, probability=0.25, fraction=fraction),
                Rule("reset", {"GET"}, probability=0.35, fraction=fraction),
            )
            for key, data in files.items():
                try:
                    got = (m.path / key).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
                    outcomes["eio"] += 1
                    continue
                assert got == data, f"{key}: wrong bytes ({len(got)} of {len(data)})"
                outcomes["ok"] += 1
            proxy.clear()
            assert os.path.ismount(m.path)
            m.umount()
        faults = dict(proxy.faults)
    report(test="download", faults=faults, files_verified=outcomes["ok"], bytes_lost=0, **outcomes)
    assert faults.get("truncate", 0) >= 2 and faults.get("reset", 0) >= 2, faults
    assert outcomes["ok"] > 0, outcomes


@pytest.fixture
def small_tmpfs(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield where
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_staging(m, name: str) -> list[tuple[str, int]]:
    """Write 30 MB into a mount whose cache dir is a 20 MB tmpfs; the (call, errno) failures."""
    big = random_bytes(30 * 2**20, 4)
    errors = []
    f = open(m.path / name, "wb", buffering=0)  # noqa: SIM115 (close() is checked on its own)
    try:
        for at in range(0, len(big), 2**20):
            f.write(big[at : at + 2**20])
    except OSError as exc:
        errors.append(("write", exc.errno))
    try:
        f.close()
    except OSError as exc:
        errors.append(("close", exc.errno))
    return errors


def put_series(deltastore, tmp_path: Path, prefix: str, versions: list[bytes]) -> None:
    src = tmp_path / "src"
    for i, data in enumerate(versions):
        src.write_bytes(data)
        deltastore.put(src, f"{prefix}/app-{i}.zip")


def test_disk_full_staging_gives_enospc_and_keeps_the_mount(
    small_tmpfs, mounter, bucket, deltastore, tmp_path
):
    """Cache dir (staging) on a 20 MB tmpfs: a 30 MB file fails with ENOSPC, nothing else."""
    before = version_series(2, 300_000, seed=3)
    put_series(deltastore, tmp_path, "keep", before)
    m = mounter(bucket, "mnt", "--cache-dir", str(small_tmpfs))
    errors = fill_staging(m, "keep/big.zip")
    assert errors, "30 MB written to a 20 MB staging disk without an error"
    assert all(e == errno.ENOSPC for _, e in errors), (errors, m.log_text()[-3000:])
    assert os.path.ismount(m.path)
    assert (m.path / "keep" / "app-0.zip").stat().st_size == len(before[0])
    os.unlink(m.path / "keep" / "big.zip")  # the failed file is given up
    done = m.umount()
    assert done.returncode == 0, done.stderr
    fresh = mounter(bucket, "fresh", "--cache-dir", str(tmp_path / "fresh-cache"))
    assert sorted(os.listdir(fresh.path / "keep")) == ["app-0.zip", "app-1.zip"]
    for i, data in enumerate(before):
        assert (fresh.path / "keep" / f"app-{i}.zip").read_bytes() == data
    assert dgfs_verify(bucket).returncode == 0


def test_disk_full_unlinking_the_failed_file_frees_the_space(small_tmpfs, mounter, bucket):
    m = mounter(bucket, "mnt", "--cache-dir", str(small_tmpfs))
    (m.path / "d").mkdir()
    assert fill_staging(m, "d/big.zip")
    os.unlink(m.path / "d" / "big.zip")
    small = random_bytes(10_000, 5)
    (m.path / "d" / "after.bin").write_bytes(small)
    assert (m.path / "d" / "after.bin").read_bytes() == small


def test_disk_full_reads_of_stored_files_still_work(
    small_tmpfs, mounter, bucket, deltastore, tmp_path
):
    before = version_series(2, 300_000, seed=3)
    put_series(deltastore, tmp_path, "keep", before)
    m = mounter(bucket, "mnt", "--cache-dir", str(small_tmpfs))
    assert fill_staging(m, "keep/big.zip")  # failed upload: its staged data is kept
    for i, data in enumerate(before):  # decoded in a spill dir on another filesystem
        assert (m.path / "keep" / f"app-{i}.zip").read_bytes() == data
    done = m.umount()  # the failed file is reported, its staged data kept
    assert done.returncode != 0 and "keep/big.zip" in done.stderr, done.stderr


def test_disk_full_in_a_new_deltaspace_close_says_enospc(small_tmpfs, mounter, bucket):
    m = mounter(bucket, "mnt", "--cache-dir", str(small_tmpfs))
    (m.path / "new").mkdir()
    errors = fill_staging(m, "new/big.zip")  # the first file: becomes reference.bin
    assert errors
    assert all(e == errno.ENOSPC for _, e in errors), errors
    done = m.umount()  # the failed file is reported, its staged data kept
    assert done.returncode != 0 and "new/big.zip" in done.stderr, done.stderr
