"""Crash recovery: data staged by a killed daemon is uploaded by the next writable mount, in the
background, only over the object it was based on; never over newer data, never by a
read-only mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from core.errors import NotFound
from dgfs.mount import state_file
from tests.datagen import random_bytes
from tests.faultproxy import FaultProxy, Rule
from tests.mounting import mount_status


def kill_daemon(m) -> None:
    """SIGKILL the mount's daemon and detach its mount point."""
    pid = json.loads(state_file(m.path).read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)


def crash_while_writing(m, writes: dict[str, bytes]) -> None:
    """Write each file without closing it, then kill the daemon (its staged data is left)."""
    fds = []
    for name, data in writes.items():
        fd = os.open(m.path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.write(fd, data)
        fds.append(fd)
    kill_daemon(m)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass  # the daemon is gone: this close cannot succeed


def recovery_done(m, timeout: float = 60) -> dict:
    """The mount's recovery status once it has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recovery = mount_status(m.path)["recovery"]
        if recovery["state"] not in ("pending", "running"):
            return recovery
        time.sleep(0.1)
    raise AssertionError(f"recovery still running: {recovery}")


def cold(deltastore, key: str, tmp_path) -> bytes:
    out = tmp_path / "cold"
    deltastore.get(key, out)
    return out.read_bytes()


def test_kill9_during_writes_then_remount_recovers(mounter, bucket, deltastore, tmp_path):
    m = mounter(bucket)
    done = random_bytes(50_000, 1)
    (m.path / "closed.bin").write_bytes(done)  # close() returned: must be intact
    unfinished = random_bytes(70_000, 2)
    crash_while_writing(m, {"open.bin": unfinished})
    again = mounter(bucket, "mnt2")
    assert recovery_done(again)["state"] == "done"
    assert (again.path / "closed.bin").read_bytes() == done
    assert (again.path / "open.bin").read_bytes() == unfinished
    assert "recovered unfinished upload of open.bin" in again.log_text()
    record = deltastore.stat("open.bin")
    assert record.attrs.mode is not None and record.attrs.mode & 0o777 == 0o640
    assert cold(deltastore, "open.bin", tmp_path) == unfinished


def test_recovery_never_overwrites_newer_data(mounter, bucket, deltastore, tmp_path):
    """A staged overwrite of a file another client replaced since is kept beside it."""
    m = mounter(bucket)
    first = {name: random_bytes(40_000, seed) for seed, name in enumerate(["f.bin", "g.bin"])}
    for name, data in first.items():
        (m.path / name).write_bytes(data)
    staged = {name: random_bytes(30_000, 10 + i) for i, name in enumerate(first)}
    crash_while_writing(m, staged)
    theirs = random_bytes(20_000, 20)
    (tmp_path / "theirs").write_bytes(theirs)
    deltastore.put(tmp_path / "theirs", "f.bin")  # another client, after the crash
    again = mounter(bucket, "mnt2")
    report = recovery_done(again)["report"]
    assert cold(deltastore, "f.bin", tmp_path) == theirs  # newer data untouched
    assert cold(deltastore, "g.bin", tmp_path) == staged["g.bin"]  # unchanged: overwritten
    kept = [n for n in os.listdir(again.path) if n.startswith("f.bin.dgfs-recovered-")]
    assert len(kept) == 1, (os.listdir(again.path), report)
    assert cold(deltastore, kept[0], tmp_path) == staged["f.bin"]
    assert any(kept[0] in line for line in report), report


def test_read_only_mount_leaves_staged_data_for_a_writable_one(
    mounter, bucket, deltastore, tmp_path
):
    m = mounter(bucket)
    unfinished = random_bytes(30_000, 3)
    crash_while_writing(m, {"new.bin": unfinished})
    ro = mounter(bucket, "ro", "--read-only")
    assert recovery_done(ro) == {"state": "skipped (read-only mount)", "left": 1}
    with pytest.raises(NotFound):
        deltastore.stat("new.bin")
    assert ro.umount().returncode == 0
    rw = mounter(bucket, "rw")
    assert recovery_done(rw)["state"] == "done"
    assert cold(deltastore, "new.bin", tmp_path) == unfinished


def test_recovery_does_not_hold_up_the_mount(s3_server, mounter, bucket, deltastore, tmp_path):
    unfinished = random_bytes(30_000, 4)
    with FaultProxy(s3_server.endpoint_url) as proxy:  # one endpoint URL for both mounts
        m = mounter(bucket, "mnt", "--endpoint-url", proxy.url)
        crash_while_writing(m, {"slow.bin": unfinished})
        proxy.set_rules(Rule("delay", {"PUT"}, schedule={1}, path_contains="slow", stall_seconds=4))
        again = mounter(bucket, "mnt2", "--endpoint-url", proxy.url)
        assert mount_status(again.path)["recovery"]["state"] in ("pending", "running")
        assert os.listdir(again.path) == []  # serving while the recovery upload is slow
        assert recovery_done(again)["state"] == "done"
        assert (again.path / "slow.bin").read_bytes() == unfinished
    assert cold(deltastore, "slow.bin", tmp_path) == unfinished


def test_staged_data_of_another_endpoint_is_parked(s3_server, mounter, bucket, deltastore):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        m = mounter(bucket, "mnt", "--endpoint-url", proxy.url)
        crash_while_writing(m, {"elsewhere.bin": random_bytes(10_000, 5)})
    again = mounter(bucket, "mnt2")  # same bucket name, another endpoint URL
    report = recovery_done(again)["report"]
    assert len(report) == 1 and "belongs to" in report[0] and "recovery/" in report[0], report
    with pytest.raises(NotFound):
        deltastore.stat("elsewhere.bin")
