"""Crash recovery: data staged by a killed daemon is uploaded by the next mount, not dropped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from dgfs.mount import state_file
from tests.datagen import random_bytes


def test_kill9_during_writes_then_remount_recovers(mounter, bucket, deltastore, tmp_path):
    m = mounter(bucket)
    done = random_bytes(50_000, 1)
    (m.path / "closed.bin").write_bytes(done)  # close() returned: must be intact
    unfinished = random_bytes(70_000, 2)
    fd = os.open(m.path / "open.bin", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, unfinished)
    pid = json.loads(state_file(m.path).read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.close(fd)
    except OSError:
        pass  # the daemon is gone: this close cannot succeed
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)
    again = mounter(bucket, "mnt2")
    assert (again.path / "closed.bin").read_bytes() == done
    assert (again.path / "open.bin").read_bytes() == unfinished
    assert "recovered unfinished upload of open.bin" in again.log_text()
    record = deltastore.stat("open.bin")
    assert record.attrs.mode is not None and record.attrs.mode & 0o777 == 0o640
