"""Private local directories: cache/staging dirs and the mount state dir are checked before use.

An existing directory must be ours and not a symlink (else a one-line refusal); one that is
group/world accessible is made 0700. State files are written without following symlinks, and
`dgfs umount` only waits on a pid that is a dgfs daemon of that mount point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cache.procdir import UnsafeDirectory, make_private_dir
from core.proc import pid_alive
from dgfs import mount as mount_mod

OTHER_UID = 65534  # nobody


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_existing_world_readable_dir_is_made_private(tmp_path):
    where = tmp_path / "cache"
    where.mkdir(mode=0o777)
    os.chmod(where, 0o777)
    make_private_dir(where)
    assert _mode(where) == 0o700


def test_dir_of_another_user_is_refused(tmp_path):
    where = tmp_path / "cache"
    where.mkdir(mode=0o700)
    os.chown(where, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory, match="belongs to uid 65534"):
        make_private_dir(where)


def test_symlinked_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    with pytest.raises(UnsafeDirectory, match="symlink"):
        make_private_dir(tmp_path / "cache")


def test_sticky_shared_dir_is_refused_not_chmodded(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(UnsafeDirectory, match="sticky"):
        make_private_dir(shared)
    assert _mode(shared) == 0o1777


def test_mount_refuses_a_cache_dir_of_another_user_in_one_line(s3_server, bucket, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    mp = tmp_path / "mp"
    mp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dgfs.cli", "mount", bucket, str(mp), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "belongs to uid 65534" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.ismount(mp)


def test_state_dir_for_root_without_xdg_runtime_dir(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("root's state directory")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert mount_mod.runtime_dir() == Path("/run/dgfs")
    assert _mode(Path("/run/dgfs")) == 0o700


def test_state_dir_of_another_user_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "dgfs-mounts").mkdir(mode=0o700)
    os.chown(tmp_path / "dgfs-mounts", OTHER_UID, OTHER_UID)
    with pytest.raises(mount_mod.MountError, match="belongs to uid"):
        mount_mod.runtime_dir()


def test_state_file_write_does_not_follow_symlinks(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    state = mount_mod.state_file(tmp_path / "mp")
    for planted in (state, state.with_suffix(".tmp")):
        planted.symlink_to(victim)
    mount_mod._write_state(state, {"pid": 1})
    assert victim.read_text() == "precious"
    assert not state.is_symlink()
    assert json.loads(state.read_text()) == {"pid": 1}


def test_umount_does_not_wait_on_a_pid_that_is_not_the_daemon(mounter, bucket):
    m = mounter(bucket)
    state = mount_mod.state_file(m.path)
    real = json.loads(state.read_text())
    with subprocess.Popen(["sleep", "120"]) as stranger:
        try:
            assert not mount_mod.serves(stranger.pid, os.path.realpath(m.path))
            assert mount_mod.serves(real["pid"], os.path.realpath(m.path))
            mount_mod._write_state(state, {**real, "pid": stranger.pid})
            started = time.monotonic()
            done = m.umount()
            assert done.returncode == 0, done.stderr
            assert time.monotonic() - started < 60
            assert stranger.poll() is None  # neither waited on nor signalled
        finally:
            stranger.kill()
    deadline = time.monotonic() + 30
    while pid_alive(real["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    state.unlink(missing_ok=True)  # the daemon's last word, written after umount returned
