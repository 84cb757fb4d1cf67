"""POSIX corners that build tools and test suites hit (issue 18), on real mounts, each read
back cold after a remount where it is stored: special files, ctime, utimensat precision,
NAME_MAX, trailing slashes, sticky directories, non-owner chown/write, hard links.

Non-root steps run in a forked child that changes directory into the mount as root, then
drops to another uid/gid (the mount has allow_other; the kernel checks access under
default_permissions).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

NOBODY, OTHER = 65534, 65533


def as_user(where: Path, uid: int, gid: int, action: Callable[[], None], groups=()) -> int:
    """Run `action` in a child in `where` as uid/gid; returns 0 or the errno it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.chdir(where)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            action()
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def remount_cold(m, mounter, bucket: str, *extra: str):
    assert m.umount().returncode == 0
    return mounter(bucket, "fresh", *extra, cache="cold")


def test_special_files_are_stored_as_metadata(mounter, bucket, objectstore):
    m = mounter(bucket, "mnt", "--allow-other")
    d = m.path
    os.mkfifo(d / "fifo", 0o640)
    os.mknod(d / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 2))
    os.mknod(d / "blk", stat.S_IFBLK | 0o660, os.makedev(8, 3))
    cwd = os.getcwd()  # (the dgfs CLI subprocesses run from it: keep it)
    os.chdir(d)  # AF_UNIX paths are short: bind by relative name
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("sock")
    finally:
        os.chdir(cwd)
    os.chmod(d / "fifo", 0o604)
    # the kernel does the FIFO's I/O: dgfs stores only the inode
    fd = os.open(d / "fifo", os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"through the pipe")
    assert os.read(fd, 100) == b"through the pipe"
    os.close(fd)

    def check(where: Path) -> None:
        st = {n: os.lstat(where / n) for n in ("fifo", "chr", "blk", "sock")}
        assert stat.S_ISFIFO(st["fifo"].st_mode) and stat.S_IMODE(st["fifo"].st_mode) == 0o604
        assert stat.S_ISCHR(st["chr"].st_mode) and st["chr"].st_rdev == os.makedev(1, 2)
        assert stat.S_ISBLK(st["blk"].st_mode) and st["blk"].st_rdev == os.makedev(8, 3)
        assert stat.S_ISSOCK(st["sock"].st_mode)
        assert all(s.st_size == 0 for s in st.values())

    check(d)
    for name in ("fifo", "chr", "blk", "sock"):  # zero-byte objects, type in dgfs-mode
        head = objectstore.head(name)
        assert head.size == 0
    assert objectstore.head("chr").metadata["dgfs-rdev"] == str(os.makedev(1, 2))
    with pytest.raises(FileExistsError):
        os.mkfifo(d / "fifo")
    m = remount_cold(m, mounter, bucket)
    check(m.path)  # without -o dev: dgfs's own special files keep their type
    os.unlink(m.path / "fifo")
    os.unlink(m.path / "chr")
    assert sorted(os.listdir(m.path)) == ["blk", "sock"]


def test_ctime_follows_every_change(mounter, bucket):
    m = mounter(bucket)
    f = m.path / "f"
    f.write_bytes(b"one")
    st0 = os.stat(f)
    assert st0.st_ctime_ns >= st0.st_mtime_ns
    time.sleep(0.05)
    os.chmod(f, 0o600)
    st1 = os.stat(f)
    assert st1.st_ctime_ns > st0.st_ctime_ns and st1.st_mtime_ns == st0.st_mtime_ns
    time.sleep(0.05)
    os.chown(f, 1234, 5678)
    st2 = os.stat(f)
    assert st2.st_ctime_ns > st1.st_ctime_ns
    time.sleep(0.05)
    os.rename(f, m.path / "g")
    st3 = os.stat(m.path / "g")
    assert st3.st_ctime_ns > st2.st_ctime_ns and st3.st_mtime_ns == st0.st_mtime_ns
    time.sleep(0.05)
    os.truncate(m.path / "g", 1)
    st4 = os.stat(m.path / "g")
    assert st4.st_ctime_ns > st3.st_ctime_ns and st4.st_mtime_ns > st3.st_mtime_ns
    # a directory: chmod is stored; entries added/removed advance mtime and ctime
    os.mkdir(m.path / "d")
    d0 = os.stat(m.path / "d")
    time.sleep(0.05)
    (m.path / "d/x").write_bytes(b"x")
    d1 = os.stat(m.path / "d")
    assert d1.st_mtime_ns > d0.st_mtime_ns and d1.st_ctime_ns > d0.st_ctime_ns
    time.sleep(0.05)
    os.chmod(m.path / "d", 0o750)
    d2 = os.stat(m.path / "d")
    assert d2.st_ctime_ns > d1.st_ctime_ns
    time.sleep(1.2)  # coalesced attribute writes land
    m = remount_cold(m, mounter, bucket)
    cold = os.stat(m.path / "g")
    assert (cold.st_ctime_ns, cold.st_mtime_ns) == (st4.st_ctime_ns, st4.st_mtime_ns)
    assert (cold.st_uid, cold.st_gid, stat.S_IMODE(cold.st_mode)) == (1234, 5678, 0o600)
    assert os.stat(m.path / "d").st_ctime_ns == d2.st_ctime_ns


def test_utimensat_nanoseconds_now_and_omit(mounter, bucket):
    m = mounter(bucket)
    f = m.path / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    # touch -m: UTIME_OMIT for atime; touch -a: UTIME_OMIT for mtime
    subprocess.run(["touch", "-m", "-d", "@3.000000789", str(f)], check=True)
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 3_000_000_789)
    subprocess.run(["touch", "-a", "-d", "@4.5", str(f)], check=True)
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (4_500_000_000, 3_000_000_789)
    before = time.time_ns()
    subprocess.run(["touch", str(f)], check=True)  # UTIME_NOW for both
    st = os.stat(f)
    # the kernel fills in "now" from its coarse clock (a tick behind time.time_ns())
    assert abs(st.st_mtime_ns - before) < 10**9 and abs(st.st_atime_ns - before) < 10**9
    os.utime(f, ns=(5_000_000_001, 6_000_000_002))
    time.sleep(1.2)
    m = remount_cold(m, mounter, bucket)
    st = os.stat(m.path / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_001, 6_000_000_002)


def test_names_longer_than_255_bytes(mnt):
    ok, long = "a" * 255, "b" * 256
    (mnt.path / ok).write_bytes(b"fits")
    assert os.listdir(mnt.path) == [ok]
    for action in (
        lambda: os.stat(mnt.path / long),
        lambda: open(mnt.path / long, "wb"),  # noqa: SIM115
        lambda: os.mkdir(mnt.path / long),
        lambda: os.symlink("target", mnt.path / long),
        lambda: os.rename(mnt.path / ok, mnt.path / long),
        lambda: os.mkfifo(mnt.path / long),
    ):
        with pytest.raises(OSError) as exc:
            action()
        assert exc.value.errno == errno.ENAMETOOLONG
    assert os.listdir(mnt.path) == [ok]


def test_trailing_slash_on_a_file(mnt):
    (mnt.path / "f").write_bytes(b"x")
    for action in (
        lambda: os.stat(str(mnt.path / "f") + "/"),
        lambda: open(str(mnt.path / "f") + "/"),  # noqa: SIM115
        lambda: os.stat(mnt.path / "f" / "x"),
        lambda: os.rename(mnt.path / "f", str(mnt.path / "g") + "/"),
    ):
        with pytest.raises(OSError) as exc:
            action()
        assert exc.value.errno in (errno.ENOTDIR, errno.EISDIR), exc.value
    assert os.listdir(mnt.path) == ["f"]


def test_sticky_directory(mounter, bucket):
    m = mounter(bucket, "mnt", "--allow-other")
    sticky = m.path / "tmp"
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    assert as_user(sticky, NOBODY, NOBODY, lambda: Path("mine").write_bytes(b"n")) == 0
    assert as_user(sticky, NOBODY, NOBODY, lambda: Path("mine2").write_bytes(b"n")) == 0
    # another user may neither unlink nor rename over nobody's file
    assert as_user(sticky, OTHER, OTHER, lambda: os.unlink("mine")) == errno.EPERM
    assert as_user(sticky, OTHER, OTHER, lambda: os.rename("mine", "x")) == errno.EPERM
    assert as_user(sticky, OTHER, OTHER, lambda: Path("theirs").write_bytes(b"o")) == 0
    assert as_user(sticky, OTHER, OTHER, lambda: os.rename("theirs", "mine")) == errno.EPERM
    # the file's owner may; so does the directory's owner (here: a dir owned by OTHER)
    assert as_user(sticky, NOBODY, NOBODY, lambda: os.unlink("mine")) == 0
    os.chown(sticky, OTHER, OTHER)
    assert as_user(sticky, OTHER, OTHER, lambda: os.unlink("mine2")) == 0
    m = remount_cold(m, mounter, bucket, "--allow-other")
    st = os.stat(m.path / "tmp")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_uid == OTHER
    assert sorted(os.listdir(m.path / "tmp")) == ["theirs"]
    assert as_user(m.path / "tmp", NOBODY, NOBODY, lambda: os.unlink("theirs")) == errno.EPERM


def test_non_owner_chown_and_setid_clearing(mounter, bucket):
    m = mounter(bucket, "mnt", "--allow-other")
    os.chmod(m.path, 0o777)
    assert as_user(m.path, NOBODY, NOBODY, lambda: Path("f").write_bytes(b"x"), [100]) == 0
    f = m.path / "f"
    # a non-root owner may chgrp only to a group it belongs to, never chown to another user
    assert as_user(m.path, NOBODY, NOBODY, lambda: os.chown("f", -1, 100), [100]) == 0
    assert os.stat(f).st_gid == 100
    assert as_user(m.path, NOBODY, NOBODY, lambda: os.chown("f", -1, 200), [100]) == errno.EPERM
    assert as_user(m.path, NOBODY, NOBODY, lambda: os.chown("f", 0, -1), [100]) == errno.EPERM
    # chown clears setuid/setgid
    os.chmod(f, 0o6755)
    os.chown(f, OTHER, -1)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    # a write by someone else clears setuid
    os.chmod(f, 0o4777)

    def append() -> None:
        with open("f", "ab") as fh:
            fh.write(b"more")

    assert as_user(m.path, NOBODY, NOBODY, append) == 0
    assert not os.stat(f).st_mode & stat.S_ISUID
    time.sleep(1.2)
    m = remount_cold(m, mounter, bucket, "--allow-other")
    st = os.stat(m.path / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, 100, 0o777)
    assert (m.path / "f").read_bytes() == b"xmore"


def test_unlinked_open_file_has_no_links(mnt):
    f = mnt.path / "f"
    f.write_bytes(b"kept")
    with open(f, "rb") as fh:
        assert os.fstat(fh.fileno()).st_nlink == 1
        os.unlink(f)
        assert os.fstat(fh.fileno()).st_nlink == 0
        assert fh.read() == b"kept"


def test_hard_links_are_refused_consistently(mnt):
    (mnt.path / "f").write_bytes(b"x")
    with pytest.raises(OSError) as exc:
        os.link(mnt.path / "f", mnt.path / "g")
    assert exc.value.errno == errno.EPERM
    assert os.stat(mnt.path / "f").st_nlink == 1
    assert os.listdir(mnt.path) == ["f"]
