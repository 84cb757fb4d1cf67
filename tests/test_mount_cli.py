"""The mount command as mount(8) and signals drive it: fstab helpers, SIGTERM, readiness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.proc import pid_alive
from tests.mounting import force_unmount

VENV_BIN = Path(sys.executable).parent


def _wait_unmounted(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.ismount(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.ismount(path)


@pytest.mark.parametrize("fstype", ["fuse.dgfs", "dgfs"])
def test_mount_via_mount8(s3_server, bucket, tmp_path, fstype):
    """`mount -t fuse.dgfs` (mount.fuse3 runs `dgfs SRC MP -o …`) and `mount -t dgfs`."""
    mp = tmp_path / "mp"
    mp.mkdir()
    # mount(8) looks for /sbin/mount.<type>; mount.fuse3 runs `dgfs` with PATH=/usr/sbin:…
    helper = Path("/sbin/mount.dgfs") if fstype == "dgfs" else Path("/usr/sbin/dgfs")
    created = False
    if not helper.exists():
        helper.symlink_to(VENV_BIN / helper.name)
        created = True
    env = dict(os.environ)
    opts = f"rw,_netdev,noauto,endpoint_url={s3_server.endpoint_url},metadata_ttl=2," + (
        f"cache_dir={tmp_path / 'cache'},log_file={tmp_path / 'log'}"
    )
    try:
        proc = subprocess.run(
            ["mount", "-t", fstype, bucket, str(mp), "-o", opts],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert os.path.ismount(mp)
        (mp / "hello.txt").write_text("via fstab\n")
        assert (mp / "hello.txt").read_text() == "via fstab\n"
        umount = subprocess.run(
            [sys.executable, "-m", "dgfs.cli", "umount", str(mp)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert umount.returncode == 0, umount.stderr
    finally:
        force_unmount(mp)
        if created:
            helper.unlink()


def test_sigterm_unmounts_cleanly_after_uploads(mounter, bucket, deltastore):
    m = mounter(bucket)
    fd = os.open(m.path / "pending.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 10_000)
    os.close(fd)
    pid = int(__import__("json").loads(_state_text(m.path))["pid"])
    os.kill(pid, signal.SIGTERM)
    _wait_unmounted(m.path)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:  # it logs after unmounting
        time.sleep(0.05)
    assert deltastore.stat("pending.bin").original_size == 10_000
    assert "unmounted cleanly" in m.log_text()


def _state_text(mountpoint: Path) -> str:
    from dgfs.mount import state_file

    return state_file(mountpoint).read_text()


def test_mount_reports_bad_source_in_one_line(s3_server, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dgfs.cli", "mount", "no-such-bucket-x", str(mp)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no-such-bucket-x" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mp)
