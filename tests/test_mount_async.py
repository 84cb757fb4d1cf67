"""Asynchronous write-back (`--write-back async`) on a real mount: close() returns once the
data is staged durably and the upload runs in the background; fsync() and umount wait for it,
a failed upload is reported by fsync() and its data reaches S3 later, a killed daemon's pending
uploads are recovered by the next mount. The fault proxy (tests/faultproxy.py) makes uploads
slow or failing on purpose; everything is read back cold (a new cache dir)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from core.errors import NotFound
from dgfs.cli import parse_o_options
from dgfs.options import write_back_mode
from tests.datagen import random_bytes, version_series
from tests.faultproxy import FaultProxy, Rule
from tests.mounting import DGFS, mount_status
from tests.test_mount_recovery import kill_daemon, recovery_done

ASYNC = ("--write-back", "async")


@pytest.fixture
def proxy(s3_server):
    """A pass-through proxy to the local S3 server; tests set rules on it."""
    with FaultProxy(s3_server.endpoint_url, seed=5) as p:
        yield p


def stored(deltastore, name: str) -> bool:
    try:
        deltastore.stat(name)
        return True
    except NotFound:
        return False


def cp(src: Path, dst: Path) -> float:
    """`cp SRC DST`; returns the seconds it took (close() included)."""
    start = time.monotonic()
    subprocess.run(["cp", str(src), str(dst)], check=True, timeout=120)
    return time.monotonic() - start


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cold_files(mounter, bucket: str, names, where: str = "cold") -> dict[str, bytes]:
    """The files as a fresh mount with its own (empty) cache reads them."""
    m = mounter(bucket, where, cache=f"{where}-cache")
    return {name: (m.path / name).read_bytes() for name in names}


def test_close_returns_before_the_upload_and_fsync_waits(
    proxy, mounter, bucket, deltastore, tmp_path
):
    m = mounter(bucket, "mnt", "--endpoint-url", proxy.url, *ASYNC)
    data = random_bytes(120_000, 1)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    proxy.set_rules(Rule("delay", {"PUT"}, probability=1.0, stall_seconds=4))
    took = cp(src, m.path / "a.bin")
    assert not stored(deltastore, "a.bin"), f"in S3 already after close ({took:.2f} s)"
    status = mount_status(m.path)
    assert status["pending_uploads"] == ["a.bin"]
    assert status["write_back"]["mode"] == "async"
    assert status["write_back"]["queued"] + status["write_back"]["running"] == 1
    text = subprocess.run([*DGFS, "status", str(m.path)], capture_output=True, text=True).stdout
    assert "pending uploads: 1" in text and "write-back:      async, " in text, text
    # the pending file reads and stats as written (from its staged copy)
    assert os.stat(m.path / "a.bin").st_size == len(data)
    assert (m.path / "a.bin").read_bytes() == data
    start = time.monotonic()
    fsync(m.path / "a.bin")
    assert stored(deltastore, "a.bin")
    assert time.monotonic() - start > 1.0  # it waited for the slow upload
    proxy.clear()
    assert mount_status(m.path)["pending_uploads"] == []
    assert cold_files(mounter, bucket, ["a.bin"]) == {"a.bin": data}


def test_umount_waits_for_every_pending_upload(proxy, mounter, bucket, deltastore, tmp_path):
    m = mounter(bucket, "mnt", "--endpoint-url", proxy.url, *ASYNC)
    (m.path / "rel").mkdir()
    files = {f"rel/app-{i}.zip": data for i, data in enumerate(version_series(6, 200_000))}
    proxy.set_rules(Rule("delay", {"PUT"}, probability=1.0, stall_seconds=1))
    for i, (name, data) in enumerate(files.items()):
        src = tmp_path / f"src{i}"
        src.write_bytes(data)
        cp(src, m.path / name)
    assert len(mount_status(m.path)["pending_uploads"]) >= 1
    done = m.umount()
    assert done.returncode == 0, done.stderr + m.log_text()[-3000:]
    assert all(stored(deltastore, name) for name in files)
    assert "upload" not in done.stderr
    assert cold_files(mounter, bucket, files) == files


def test_changes_to_pending_files_are_kept_in_order(proxy, mounter, bucket, deltastore, tmp_path):
    """Rewrite, rename, truncate and unlink files whose uploads wait or run: the last content
    wins, under the last name."""
    m = mounter(bucket, "mnt", "--endpoint-url", proxy.url, *ASYNC)
    v1, v2, other = random_bytes(90_000, 2), random_bytes(80_000, 3), random_bytes(50_000, 4)
    for name, data in {"v1": v1, "v2": v2, "other": other}.items():
        (tmp_path / name).write_bytes(data)
    proxy.set_rules(Rule("delay", {"PUT"}, probability=1.0, stall_seconds=1))
    cp(tmp_path / "v1", m.path / "a.bin")
    cp(tmp_path / "v2", m.path / "a.bin")  # while the first upload waits or runs
    assert (m.path / "a.bin").read_bytes() == v2
    cp(tmp_path / "other", m.path / "b.bin")
    os.rename(m.path / "b.bin", m.path / "c.bin")
    assert (m.path / "c.bin").read_bytes() == other
    cp(tmp_path / "v1", m.path / "gone.bin")
    os.unlink(m.path / "gone.bin")
    cp(tmp_path / "v1", m.path / "short.bin")
    os.truncate(m.path / "short.bin", 1000)
    assert os.stat(m.path / "short.bin").st_size == 1000
    os.mknod(m.path / "empty", stat.S_IFREG | 0o644)
    done = m.umount()
    assert done.returncode == 0, done.stderr + m.log_text()[-3000:]
    assert not stored(deltastore, "b.bin") and not stored(deltastore, "gone.bin")
    got = cold_files(mounter, bucket, ["a.bin", "c.bin", "short.bin", "empty"])
    assert got == {"a.bin": v2, "c.bin": other, "short.bin": v1[:1000], "empty": b""}
    assert sorted(os.listdir(tmp_path / "cold")) == ["a.bin", "c.bin", "empty", "short.bin"]


def test_failed_upload_fails_fsync_and_reaches_s3_later(
    proxy, mounter, bucket, deltastore, tmp_path
):
    m = mounter(bucket, "mnt", "--endpoint-url", proxy.url, *ASYNC)
    data = random_bytes(100_000, 5)
    (tmp_path / "src").write_bytes(data)
    proxy.set_rules(Rule("error500", {"PUT"}, probability=1.0))
    cp(tmp_path / "src", m.path / "a.bin")  # close() succeeds: the data is staged
    with pytest.raises(OSError) as exc:
        fsync(m.path / "a.bin")
    assert exc.value.errno == errno.EIO
    status = mount_status(m.path)
    assert "a.bin" in status["failed_uploads"] and status["pending_uploads"] == ["a.bin"]
    assert (m.path / "a.bin").read_bytes() == data  # kept, still readable
    proxy.clear()
    fsync(m.path / "a.bin")  # the same staged data, uploaded now
    assert stored(deltastore, "a.bin")
    assert mount_status(m.path)["failed_uploads"] == {}
    assert m.umount().returncode == 0
    assert cold_files(mounter, bucket, ["a.bin"]) == {"a.bin": data}


def test_kill9_with_pending_uploads_then_remount_recovers(
    proxy, mounter, bucket, deltastore, tmp_path
):
    m = mounter(bucket, "mnt", "--endpoint-url", proxy.url, *ASYNC)
    files = {f"f{i}.bin": random_bytes(60_000 + i, 10 + i) for i in range(3)}
    proxy.set_rules(Rule("error500", {"PUT"}, probability=1.0))  # nothing reaches S3
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        cp(tmp_path / name, m.path / name)  # each close() returned 0
    assert sorted(mount_status(m.path)["pending_uploads"]) == sorted(files)
    kill_daemon(m)
    assert not any(stored(deltastore, name) for name in files)
    proxy.clear()
    again = mounter(bucket, "mnt2", "--endpoint-url", proxy.url, *ASYNC)  # same cache dir
    recovery = recovery_done(again)
    assert recovery["state"] == "done", recovery
    assert len(recovery["report"]) == len(files), recovery
    assert cold_files(mounter, bucket, files) == files


def test_option_parsing():
    assert parse_o_options(("write_back=async",)) == {"write_back": "async"}
    assert write_back_mode(None, {}) == "sync"
    assert write_back_mode(None, {"DG_WRITE_BACK": "ASYNC"}) == "async"
    assert write_back_mode("sync", {"DG_WRITE_BACK": "async"}) == "sync"
    with pytest.raises(ValueError):
        write_back_mode("later", {})
