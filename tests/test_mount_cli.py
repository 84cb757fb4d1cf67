"""The mount command as mount(8) and signals drive it: fstab helpers, SIGTERM, readiness."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.proc import pid_alive
from tests.mounting import force_unmount

REPO = Path(__file__).resolve().parent.parent
# how each helper starts this checkout's code (not whatever `dgfs` an installed venv points to)
HELPER_CODE = {
    "dgfs": "from dgfs.cli import run; run()",
    "mount.dgfs": "from dgfs.fstab import main; main()",
}


def _wait_unmounted(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.ismount(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.ismount(path)


def _private_helper(where: Path, name: str) -> Path:
    """An executable `name` in a private dir running this checkout (nothing under /sbin)."""
    where.mkdir(exist_ok=True)
    helper = where / name
    helper.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)}"
        f' -c {shlex.quote(HELPER_CODE[name])} "$@"\n'
    )
    helper.chmod(0o755)
    return helper


@pytest.mark.parametrize("fstype", ["fuse.dgfs", "dgfs"])
def test_mount_via_mount8(s3_server, bucket, tmp_path, fstype):
    """fstab types `fuse.dgfs` and `dgfs`, started the way mount(8) starts them.

    `fuse.dgfs`: mount(8) runs mount.fuse3, which runs `dgfs SRC MP -o …`; mount(8) resets
    PATH, so the test names its private `dgfs` by absolute path (`-t fuse 'HELPER#SRC'`, the
    same command line). `dgfs`: mount(8) only looks in /sbin for `mount.dgfs`, so the test runs
    its private `mount.dgfs SRC MP -o …` as mount(8) would.
    """
    mp = tmp_path / "mp"
    mp.mkdir()
    opts = f"rw,_netdev,noauto,endpoint_url={s3_server.endpoint_url},metadata_ttl=2," + (
        f"cache_dir={tmp_path / 'cache'},log_file={tmp_path / 'log'}"
    )
    if fstype == "dgfs":
        helper = _private_helper(tmp_path / "bin", "mount.dgfs")
        command = [str(helper), bucket, str(mp), "-o", opts]
    else:
        helper = _private_helper(tmp_path / "bin", "dgfs")
        command = ["mount", "-t", "fuse", f"{helper}#{bucket}", str(mp), "-o", opts]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
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


def test_dg_cache_dir_holds_cache_staging_and_metadata(s3_server, bucket, tmp_path):
    """DG_CACHE_DIR alone (no --cache-dir) decides where everything local goes: the read
    cache, staged writes and the metadata database (resolved once, core.cache.settings)."""
    where, cache_dir = tmp_path / "mnt", tmp_path / "dg-cache"
    where.mkdir()
    env = {**os.environ, "DG_CACHE_DIR": str(cache_dir)}
    dgfs = [sys.executable, "-m", "dgfs.cli"]
    args = [*dgfs, "mount", bucket, str(where), "--log-file", str(tmp_path / "log")]
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=120)
    try:
        (where / "f.txt").write_bytes(b"x" * 5000)
        assert (where / "f.txt").read_bytes() == b"x" * 5000
        assert list(cache_dir.glob("metadata-*.sqlite3"))
        assert (cache_dir / "staging").is_dir()
        assert (cache_dir / "shared").is_dir() or list(cache_dir.glob("ephemeral-*"))
    finally:
        done = subprocess.run([*dgfs, "umount", str(where)], capture_output=True, timeout=300)
        force_unmount(where)
    assert done.returncode == 0
