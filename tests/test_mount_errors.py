"""Failures a user meets on a real mount: S3 going away mid-write, bad mount arguments, busy
unmounts. Each must give a clear errno or a one-line message, and never lose written data."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.config import s3_settings_from_env
from core.errors import NotFound
from core.objectstore import ObjectStore
from dgfs import localserver
from tests.datagen import random_bytes

DGFS = [sys.executable, "-m", "dgfs.cli"]


def dgfs(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*DGFS, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- S3 dies during a write


@pytest.fixture
def private_s3(s3_server, tmp_path):
    """A second local S3 server this test may kill and restart (on the same port)."""
    data_dir = tmp_path / "srv"
    srv = localserver.start(data_dir)
    yield srv
    localserver.stop(data_dir)


def restart(srv: localserver.LocalServer) -> localserver.LocalServer:
    port = int(srv.endpoint_url.rsplit(":", 1)[1])
    return localserver.start(srv.data_dir, port=port)


def stop_hard(srv: localserver.LocalServer) -> None:
    localserver.kill(srv.pid)
    (srv.data_dir / "server.state").unlink(missing_ok=True)


def stored(store: ObjectStore, name: str, timeout: float = 0.0) -> bool:
    """Whether the file `name` is in S3 (direct or as a delta), waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for key in (name, name + ".delta"):
            try:
                store.head(key)
                return True
            except NotFound:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def test_upload_failure_gives_eio_and_data_reaches_s3_later(private_s3, mounter, tmp_path):
    settings = s3_settings_from_env(endpoint_url=private_s3.endpoint_url, max_attempts=2)
    name = f"t-{uuid.uuid4().hex[:16]}"
    store = ObjectStore(name, settings)
    store.create_bucket()
    m = mounter(name, "mnt", "--endpoint-url", private_s3.endpoint_url)
    (m.path / "seed.txt").write_bytes(b"the bucket is not empty\n")
    data = random_bytes(150_000, 31)
    fh = open(m.path / "a.bin", "wb")  # noqa: SIM115
    fh.write(data)
    stop_hard(private_s3)
    with pytest.raises(OSError) as exc:
        fh.close()
    assert exc.value.errno == errno.EIO
    # the written data stays visible in the mount and the failure is reported
    assert (m.path / "a.bin").read_bytes() == data
    status = json.loads(dgfs("status", m.path, "--json").stdout)
    assert "a.bin" in status["failed_uploads"]
    assert "a.bin" in status["pending_uploads"]
    assert "upload a.bin failed" in m.log_text()

    srv = restart(private_s3)
    assert srv.endpoint_url == private_s3.endpoint_url
    store.create_bucket()  # ministack forgets buckets on a kill (not what S3 does); no-op if kept
    # nobody has a.bin open: the background retry (every 10 s) must store it
    assert stored(store, "a.bin", timeout=25)
    m2 = mounter(
        name,
        "check",
        "--endpoint-url",
        srv.endpoint_url,
        "--cache-dir",
        str(tmp_path / "cache-check"),
    )
    assert (m2.path / "a.bin").read_bytes() == data
    assert (m2.path / "seed.txt").exists()
    status = json.loads(dgfs("status", m.path, "--json").stdout)
    assert status["failed_uploads"] == {}
    assert status["pending_uploads"] == []
    assert m.umount().returncode == 0


# ---------------------------------------------------------------- mount argument errors


def test_mount_nonexistent_bucket_fails_fast_in_one_line(mounter, s3_server, tmp_path):
    started = time.monotonic()
    m = mounter("no-such-bucket-zz9", "mp", check=False)
    assert time.monotonic() - started < 20
    assert not os.path.ismount(m.path)
    proc = dgfs("mount", "no-such-bucket-zz9", tmp_path / "mp")
    line = one_line_error(proc)
    assert "no-such-bucket-zz9" in line
    assert not os.path.ismount(tmp_path / "mp")


def test_mount_on_missing_mount_point(s3_server, bucket, tmp_path):
    proc = dgfs("mount", bucket, tmp_path / "nope")
    line = one_line_error(proc)
    assert "does not exist" in line
    assert not (tmp_path / "nope").exists()


def test_mount_on_non_empty_dir_needs_nonempty(mounter, bucket, s3_server, tmp_path):
    mp = tmp_path / "full"
    mp.mkdir()
    (mp / "local.txt").write_text("hidden while mounted\n")
    proc = dgfs("mount", bucket, mp, "--cache-dir", tmp_path / "cache")
    line = one_line_error(proc)
    assert "not empty" in line and "nonempty" in line
    assert not os.path.ismount(mp)
    m = mounter(bucket, "full", "-o", "nonempty")
    assert os.path.ismount(mp)
    assert os.listdir(mp) == []
    (mp / "in-s3.txt").write_text("x")
    assert m.umount().returncode == 0
    assert os.listdir(mp) == ["local.txt"]
    assert (mp / "local.txt").read_text() == "hidden while mounted\n"


def test_unreachable_endpoint_fails_fast_in_one_line(s3_server, bucket, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    started = time.monotonic()
    proc = dgfs("mount", bucket, mp, "--endpoint-url", "http://127.0.0.1:1")
    elapsed = time.monotonic() - started
    line = one_line_error(proc)
    assert "127.0.0.1:1" in line
    assert elapsed < 20
    assert not os.path.ismount(mp)


# ---------------------------------------------------------------- busy unmount


def test_umount_busy_then_lazy(mounter, bucket, objectstore):
    m = mounter(bucket)
    (m.path / "r.txt").write_bytes(b"read")
    reader = open(m.path / "r.txt", "rb")  # noqa: SIM115
    writer = open(m.path / "w.txt", "wb")  # noqa: SIM115
    lazy = None
    try:
        writer.write(b"before umount;")
        writer.flush()
        proc = m.umount()
        assert proc.returncode != 0
        assert "busy" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert os.path.ismount(m.path)
        assert reader.read() == b"read"
        lazy = subprocess.Popen(
            [*DGFS, "umount", "--lazy", str(m.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while os.path.ismount(m.path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.ismount(m.path)
        # the detached mount keeps serving the files that are open
        writer.write(b" after")
    finally:
        reader.close()
        writer.close()
    _, err = lazy.communicate(timeout=60)
    assert lazy.returncode == 0, err
    assert objectstore.get_bytes("w.txt") == b"before umount; after"


def test_umount_lazy_returns_while_a_file_stays_open(mounter, bucket):
    m = mounter(bucket)
    (m.path / "r.txt").write_bytes(b"read")
    with open(m.path / "r.txt", "rb") as reader:
        lazy = subprocess.Popen(
            [*DGFS, "umount", "--lazy", str(m.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lazy.communicate(timeout=5)
            returned = True
        except subprocess.TimeoutExpired:
            returned = False
        assert not os.path.ismount(m.path)
        assert reader.read() == b"read"
    if not returned:
        lazy.communicate(timeout=60)
    assert returned, "dgfs umount --lazy still running 5 s after the mount was detached"
    assert lazy.returncode == 0


def test_umount_of_a_dir_that_is_not_mounted(s3_server, tmp_path: Path):
    (tmp_path / "plain").mkdir()
    line = one_line_error(dgfs("umount", tmp_path / "plain"))
    assert "plain" in line


# ---------------------------------------------------------------- refused operations


def renameat2(old: Path, new: Path, flags: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_flags_and_read_only_mount(mounter, bucket):
    m = mounter(bucket)
    (m.path / "a.txt").write_bytes(b"a")
    (m.path / "b.txt").write_bytes(b"b")
    with pytest.raises(OSError) as exc:
        renameat2(m.path / "a.txt", m.path / "b.txt", 1)  # RENAME_NOREPLACE
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        renameat2(m.path / "a.txt", m.path / "b.txt", 2)  # RENAME_EXCHANGE
    assert exc.value.errno == errno.EINVAL
    renameat2(m.path / "a.txt", m.path / "c.txt", 1)  # no target: fine
    assert sorted(os.listdir(m.path)) == ["b.txt", "c.txt"]
    assert (m.path / "b.txt").read_bytes() == b"b"
    assert (m.path / "c.txt").read_bytes() == b"a"
    assert m.umount().returncode == 0

    ro = mounter(bucket, "ro", "--read-only")
    assert (ro.path / "b.txt").read_bytes() == b"b"
    attempts = [
        lambda: (ro.path / "new.txt").write_bytes(b"x"),
        lambda: os.open(ro.path / "b.txt", os.O_RDWR),
        lambda: os.mkdir(ro.path / "d"),
        lambda: os.remove(ro.path / "b.txt"),
        lambda: os.rename(ro.path / "b.txt", ro.path / "x.txt"),
        lambda: os.chmod(ro.path / "b.txt", 0o600),
        lambda: os.symlink("b.txt", ro.path / "l"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS
    assert sorted(os.listdir(ro.path)) == ["b.txt", "c.txt"]
