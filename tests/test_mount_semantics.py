"""POSIX semantics of a real mount, exercised with the tools people use: tar, dd, mv, rsync…

Each test does its operations through the mount and checks the result both through the mount
and, where it matters, after an unmount and a fresh mount (what S3 really holds).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.datagen import random_bytes, version_series, write


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, **kw)


def remount(m, mounter, bucket: str, name: str = "mnt2"):
    """Unmount `m` (uploads everything pending) and mount the bucket again elsewhere, with an
    empty cache of its own: what it reads comes from S3 (a round trip through the cache once
    hid a data-loss bug)."""
    result = m.umount()
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(m.path)
    return mounter(bucket, name, cache=f"cache-{name}")


def bucket_objects(objectstore) -> dict[str, tuple[str, int]]:
    """Every key in the bucket → (ETag, LastModified ns)."""
    out = {}
    for page in objectstore.list_pages("", delimiter=None):
        for obj in page.objects:
            out[obj.key] = (obj.etag, obj.last_modified_ns)
    return out


# ---------------------------------------------------------------- tar


def make_tree(root: Path) -> None:
    write(root / "top.txt", b"top level\n")
    write(root / "a" / "one.bin", random_bytes(70_000, 1))
    write(root / "a" / "b" / "two.txt", b"two\n" * 1000)
    write(root / "a" / "b" / "c" / "empty", b"")
    (root / "d" / "e").mkdir(parents=True)  # empty dirs
    os.symlink("a/b/two.txt", root / "link")
    os.symlink("../nowhere", root / "a" / "dangling")
    os.chmod(root / "a" / "one.bin", 0o640)


def test_tar_extract_into_and_create_from_mount(mnt, mounter, tmp_path):
    src = tmp_path / "src" / "tree"
    make_tree(src)
    run("tar", "cf", tmp_path / "in.tar", "-C", src.parent, "tree")
    run("tar", "xf", tmp_path / "in.tar", "-C", mnt.path)
    run("tar", "cf", tmp_path / "out.tar", "-C", mnt.path, "tree")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "xf", tmp_path / "out.tar", "-C", out)
    run("diff", "-r", "--no-dereference", src, out / "tree")
    for tree in (mnt.path / "tree", out / "tree"):
        assert os.readlink(tree / "link") == "a/b/two.txt"
        assert os.readlink(tree / "a" / "dangling") == "../nowhere"
        assert (tree / "link").read_bytes() == b"two\n" * 1000
        assert (tree / "d" / "e").is_dir()
        assert (tree / "a" / "b" / "c" / "empty").stat().st_size == 0
        assert (tree / "a" / "one.bin").stat().st_mode & 0o777 == 0o640
    listing = run("tar", "tvf", tmp_path / "out.tar", text=True).stdout
    assert "tree/link -> a/b/two.txt" in listing
    assert mnt.umount().returncode == 0
    cold = mounter(mnt.bucket, "cold", cache="cold-cache")
    run("diff", "-r", "--no-dereference", src, cold.path / "tree")


# ---------------------------------------------------------------- partial writes


def test_shell_append_persists_after_remount(mounter, bucket):
    m = mounter(bucket)
    f = m.path / "log.txt"
    f.write_bytes(b"line 1\n")
    run("sh", "-c", f"echo 'line 2' >> {f}")
    run("sh", "-c", f"printf 'line 3\\n' >> {f}")
    assert f.read_bytes() == b"line 1\nline 2\nline 3\n"
    m2 = remount(m, mounter, bucket)
    assert (m2.path / "log.txt").read_bytes() == b"line 1\nline 2\nline 3\n"
    run("sh", "-c", f"echo 'line 4' >> {m2.path / 'log.txt'}")
    assert (m2.path / "log.txt").read_bytes() == b"line 1\nline 2\nline 3\nline 4\n"


def test_dd_notrunc_patch_in_the_middle(mounter, bucket, deltastore, tmp_path):
    v0, v1 = version_series(2, 1_000_000, seed=7)
    deltastore.put(write(tmp_path / "v0", v0), "base.zip")
    record = deltastore.put(write(tmp_path / "v1", v1), "big.zip")  # a delta, only in S3
    assert record.stored_key == "big.zip.delta"
    local = write(tmp_path / "local.bin", v1)
    patch = write(tmp_path / "patch.bin", random_bytes(3 * 4096, 8))
    m = mounter(bucket)
    target = m.path / "big.zip"
    for where in (local, target):
        run("dd", f"if={patch}", f"of={where}", "bs=4096", "seek=100", "count=3", "conv=notrunc")
        run("dd", f"if={patch}", f"of={where}", "bs=1", "seek=999990", "count=5", "conv=notrunc")
    assert target.stat().st_size == 1_000_000
    run("cmp", local, target)
    m2 = remount(m, mounter, bucket)
    run("cmp", local, m2.path / "big.zip")
    assert (m2.path / "base.zip").read_bytes() == v0


def test_truncate_up_down_and_by_path(mounter, bucket, deltastore, tmp_path):
    base = b"abcdefghij" * 1000  # 10_000 bytes
    deltastore.put(write(tmp_path / "s3only", base), "s3only")
    m = mounter(bucket)
    for name in ("up", "down", "zero", "bypath"):
        (m.path / name).write_bytes(base)
    run("truncate", "-s", "25000", m.path / "up")
    run("truncate", "-s", "1234", m.path / "down")
    run("truncate", "-s", "0", m.path / "zero")
    os.truncate(m.path / "bypath", 4000)
    os.truncate(m.path / "s3only", 12_000)  # grow by path a file that is only in S3
    expected = {
        "up": base + b"\0" * 15_000,
        "down": base[:1234],
        "zero": b"",
        "bypath": base[:4000],
        "s3only": base + b"\0" * 2000,
    }
    for name, data in expected.items():
        assert (m.path / name).stat().st_size == len(data), name
        assert (m.path / name).read_bytes() == data, name
    m2 = remount(m, mounter, bucket)
    for name, data in expected.items():
        assert (m2.path / name).stat().st_size == len(data), name
        assert (m2.path / name).read_bytes() == data, name


def test_unlinked_open_file_append_and_refused_names(mnt):
    (mnt.path / "doomed.txt").write_bytes(b"still readable " * 100)
    with open(mnt.path / "doomed.txt", "rb") as fh:
        os.remove(mnt.path / "doomed.txt")
        assert not (mnt.path / "doomed.txt").exists()
        assert fh.read() == b"still readable " * 100
    assert os.listdir(mnt.path) == []
    fd = os.open(mnt.path / "app.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"one,")
    os.pwrite(fd, b"two", 0)  # O_APPEND: Linux appends even a pwrite
    os.close(fd)
    assert (mnt.path / "app.txt").read_bytes() == b"one,two"
    for bad in ("reference.bin", "x.delta", ".dgfs"):
        with pytest.raises(OSError) as exc:
            (mnt.path / bad).write_bytes(b"x")
        assert exc.value.errno == errno.EINVAL, bad
    os.mkfifo(mnt.path / "fifo")  # stored as metadata only (tests/test_posix.py)
    assert sorted(os.listdir(mnt.path)) == ["app.txt", "fifo"]


# ---------------------------------------------------------------- rename


def test_rename_file_within_and_across_dirs(mounter, bucket):
    m = mounter(bucket)
    (m.path / "x").mkdir()
    (m.path / "y").mkdir()
    v0, v1, v2 = version_series(3, 200_000, seed=9)
    for i, data in enumerate((v0, v1, v2)):
        (m.path / "x" / f"v{i}.zip").write_bytes(data)
    os.rename(m.path / "x" / "v1.zip", m.path / "y" / "v1.zip")  # a delta changes deltaspace
    os.rename(m.path / "x" / "v0.zip", m.path / "x" / "v0-renamed.zip")
    (m.path / "x" / "a.txt").write_bytes(b"A" * 5000)
    os.rename(m.path / "x" / "a.txt", m.path / "x" / "b.txt")
    assert not (m.path / "x" / "a.txt").exists()
    assert (m.path / "x" / "b.txt").read_bytes() == b"A" * 5000
    run("mv", m.path / "x" / "b.txt", m.path / "y" / "c.txt")
    assert sorted(os.listdir(m.path / "x")) == ["v0-renamed.zip", "v2.zip"]
    assert sorted(os.listdir(m.path / "y")) == ["c.txt", "v1.zip"]
    assert (m.path / "y" / "v1.zip").read_bytes() == v1
    m2 = remount(m, mounter, bucket)
    assert sorted(os.listdir(m2.path / "x")) == ["v0-renamed.zip", "v2.zip"]
    assert sorted(os.listdir(m2.path / "y")) == ["c.txt", "v1.zip"]
    assert (m2.path / "y" / "c.txt").read_bytes() == b"A" * 5000
    assert (m2.path / "y" / "v1.zip").read_bytes() == v1
    assert (m2.path / "x" / "v0-renamed.zip").read_bytes() == v0
    assert (m2.path / "x" / "v2.zip").read_bytes() == v2


def test_mv_over_existing_file_replaces_it(mounter, bucket):
    m = mounter(bucket)
    (m.path / "src.txt").write_bytes(b"new content\n")
    (m.path / "dst.txt").write_bytes(b"old content that is longer\n")
    run("mv", m.path / "src.txt", m.path / "dst.txt")
    assert not (m.path / "src.txt").exists()
    assert (m.path / "dst.txt").read_bytes() == b"new content\n"
    assert sorted(os.listdir(m.path)) == ["dst.txt"]
    m2 = remount(m, mounter, bucket)
    assert sorted(os.listdir(m2.path)) == ["dst.txt"]
    assert (m2.path / "dst.txt").read_bytes() == b"new content\n"


def test_rename_directory_with_files(mounter, bucket):
    m = mounter(bucket)
    v0, v1 = version_series(2, 200_000, seed=4)
    files = {
        "one.txt": b"1" * 100,
        "sub/two.txt": b"2" * 200,
        "sub/deeper/three.bin": random_bytes(50_000, 3),
        "sub/v0.zip": v0,
        "sub/v1.zip": v1,  # a delta against the deltaspace's reference.bin
    }
    for rel, data in files.items():
        write(m.path / "olddir" / rel, data)
    os.rename(m.path / "olddir", m.path / "newdir")
    assert not (m.path / "olddir").exists()
    assert os.listdir(m.path) == ["newdir"]
    for rel, data in files.items():
        assert (m.path / "newdir" / rel).read_bytes() == data, rel
    os.mkdir(m.path / "emptydir")
    os.rename(m.path / "newdir", m.path / "emptydir")  # over an empty dir: replaces it
    os.mkdir(m.path / "newdir")
    os.rename(m.path / "emptydir", m.path / "newdir")
    os.mkdir(m.path / "other")
    (m.path / "other" / "keep.txt").write_bytes(b"keep")
    with pytest.raises(OSError) as exc:
        os.rename(m.path / "newdir", m.path / "other")
    assert exc.value.errno == errno.ENOTEMPTY
    m2 = remount(m, mounter, bucket)
    assert sorted(os.listdir(m2.path)) == ["newdir", "other"]
    assert os.listdir(m2.path / "other") == ["keep.txt"]
    for rel, data in files.items():
        assert (m2.path / "newdir" / rel).read_bytes() == data, rel


def test_open_fd_survives_rename(mounter, bucket):
    m = mounter(bucket)
    (m.path / "r.txt").write_bytes(b"read me " * 1000)
    (m.path / "w.txt").write_bytes(b"")
    with open(m.path / "r.txt", "rb") as reader, open(m.path / "w.txt", "wb") as writer:
        writer.write(b"first ")
        writer.flush()
        os.rename(m.path / "r.txt", m.path / "r2.txt")
        os.rename(m.path / "w.txt", m.path / "w2.txt")
        assert reader.read() == b"read me " * 1000
        writer.write(b"second")
    assert sorted(os.listdir(m.path)) == ["r2.txt", "w2.txt"]
    assert (m.path / "w2.txt").read_bytes() == b"first second"
    m2 = remount(m, mounter, bucket)
    assert sorted(os.listdir(m2.path)) == ["r2.txt", "w2.txt"]
    assert (m2.path / "w2.txt").read_bytes() == b"first second"


def test_writer_follows_rename_of_its_directory(mounter, bucket):
    m = mounter(bucket)
    os.mkdir(m.path / "d1")
    with open(m.path / "d1" / "f.txt", "wb") as fh:
        fh.write(b"before ")
        fh.flush()
        os.rename(m.path / "d1", m.path / "d2")
        fh.write(b"after")
    assert os.listdir(m.path) == ["d2"]
    assert (m.path / "d2" / "f.txt").read_bytes() == b"before after"
    m2 = remount(m, mounter, bucket)
    assert os.listdir(m2.path) == ["d2"]
    assert (m2.path / "d2" / "f.txt").read_bytes() == b"before after"


def test_unlink_while_being_written_is_not_resurrected(mounter, bucket):
    m = mounter(bucket)
    with open(m.path / "tmp.txt", "wb") as fh:
        fh.write(b"scratch ")
        fh.flush()
        os.remove(m.path / "tmp.txt")
        fh.write(b"more")
        fh.flush()
        assert not (m.path / "tmp.txt").exists()
    assert os.listdir(m.path) == []
    m2 = remount(m, mounter, bucket)
    assert os.listdir(m2.path) == []


# ---------------------------------------------------------------- directories


def test_mkdir_rmdir_and_empty_dir_persists(mounter, bucket):
    m = mounter(bucket)
    os.mkdir(m.path / "gone")
    assert (m.path / "gone").is_dir()
    os.rmdir(m.path / "gone")
    assert not (m.path / "gone").exists()
    os.makedirs(m.path / "full" / "inner")
    (m.path / "full" / "f.txt").write_bytes(b"x")
    with pytest.raises(OSError) as exc:
        os.rmdir(m.path / "full")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as exc:
        os.rmdir(m.path / "full" / "f.txt")
    assert exc.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as exc:
        os.mkdir(m.path / "full")
    assert exc.value.errno == errno.EEXIST
    os.mkdir(m.path / "empty")
    m2 = remount(m, mounter, bucket)
    assert sorted(os.listdir(m2.path)) == ["empty", "full"]
    assert os.listdir(m2.path / "empty") == []
    assert sorted(os.listdir(m2.path / "full")) == ["f.txt", "inner"]
    with pytest.raises(OSError) as exc:
        os.rmdir(m2.path / "full")
    assert exc.value.errno == errno.ENOTEMPTY
    os.rmdir(m2.path / "full" / "inner")
    os.remove(m2.path / "full" / "f.txt")
    os.rmdir(m2.path / "full")
    m3 = remount(m2, mounter, bucket, "mnt3")
    assert os.listdir(m3.path) == ["empty"]


# ---------------------------------------------------------------- attributes


def test_chmod_and_touch_date_persist(mounter, bucket, tmp_path):
    m = mounter(bucket)
    f = m.path / "f.txt"
    f.write_bytes(b"attrs\n")
    os.mkdir(m.path / "d")
    os.chmod(f, 0o751)
    os.chmod(m.path / "d", 0o705)
    run("touch", "-d", "2001-02-03 04:05:06", f)
    expected = int(time.mktime(time.strptime("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S")))
    ns_exact = 1_234_567_891_234_567_891
    (m.path / "g.txt").write_bytes(b"ns\n")
    os.utime(m.path / "g.txt", ns=(ns_exact, ns_exact))
    # cp -p sets mode and times through the still-open, just-written destination fd
    local = write(tmp_path / "p.txt", b"preserved\n")
    os.chmod(local, 0o604)
    os.utime(local, ns=(ns_exact, ns_exact))
    run("cp", "-p", local, m.path / "p.txt")
    # attributes changed on a file being written travel with its upload
    with open(m.path / "h.txt", "wb") as fh:
        fh.write(b"one ")
        fh.flush()
        os.fchmod(fh.fileno(), 0o600)
        fh.write(b"two")
    st = os.stat(f)
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o751, expected)
    assert os.stat(m.path / "p.txt").st_mtime_ns == ns_exact
    m2 = remount(m, mounter, bucket)
    st = os.stat(m2.path / "f.txt")
    assert oct(st.st_mode & 0o7777) == oct(0o751)
    assert int(st.st_mtime) == expected
    assert st.st_mtime_ns == expected * 10**9
    assert os.stat(m2.path / "g.txt").st_mtime_ns == ns_exact
    assert oct(os.stat(m2.path / "d").st_mode & 0o7777) == oct(0o705)
    assert (m2.path / "f.txt").read_bytes() == b"attrs\n"
    st = os.stat(m2.path / "p.txt")
    assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == (oct(0o604), ns_exact)
    assert (m2.path / "p.txt").read_bytes() == b"preserved\n"
    assert oct(os.stat(m2.path / "h.txt").st_mode & 0o7777) == oct(0o600)
    assert (m2.path / "h.txt").read_bytes() == b"one two"


# ---------------------------------------------------------------- links


def test_symlinks_and_hard_links(mounter, bucket, tmp_path):
    m = mounter(bucket)
    (m.path / "target.txt").write_bytes(b"pointed at\n")
    run("ln", "-s", "target.txt", m.path / "link")
    run("ln", "-s", "/etc/does/not/exist", m.path / "abs")
    assert os.readlink(m.path / "link") == "target.txt"
    assert os.path.islink(m.path / "link")
    assert (m.path / "link").read_bytes() == b"pointed at\n"
    assert os.readlink(m.path / "abs") == "/etc/does/not/exist"
    with pytest.raises(OSError) as exc:
        os.symlink("other", m.path / "link")
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        os.link(m.path / "target.txt", m.path / "hard")
    assert exc.value.errno == errno.EPERM
    assert not (m.path / "hard").exists()
    # rsync -a out of the mount and back in keeps links as links
    run("rsync", "-a", f"{m.path}/", f"{tmp_path}/out/")
    assert os.readlink(tmp_path / "out" / "link") == "target.txt"
    assert os.readlink(tmp_path / "out" / "abs") == "/etc/does/not/exist"
    local = tmp_path / "local"
    write(local / "t", b"t")
    os.symlink("t", local / "l2")
    run("rsync", "-a", f"{local}/", f"{m.path}/in/")
    m2 = remount(m, mounter, bucket)
    assert os.readlink(m2.path / "link") == "target.txt"
    assert os.readlink(m2.path / "in" / "l2") == "t"
    assert (m2.path / "in" / "l2").read_bytes() == b"t"


# ---------------------------------------------------------------- two mounts


def test_second_mount_sees_writes_after_ttl(mounter, bucket, tmp_path):
    a = mounter(bucket, "a")
    b = mounter(bucket, "b", "--cache-dir", str(tmp_path / "cache-b"))
    assert os.listdir(b.path) == []
    v0, v1, v2 = version_series(3, 300_000, seed=11)
    (a.path / "base.zip").write_bytes(v0)
    (a.path / "shared.zip").write_bytes(v1)  # stored as a delta against base.zip
    time.sleep(1.5)
    assert sorted(os.listdir(b.path)) == ["base.zip", "shared.zip"]
    assert (b.path / "shared.zip").read_bytes() == v1
    (a.path / "shared.zip").write_bytes(v2)  # same size, new content
    time.sleep(1.5)
    assert (b.path / "shared.zip").stat().st_size == len(v2)
    assert (b.path / "shared.zip").read_bytes() == v2
    data = random_bytes(1000, 12)
    (a.path / "shared.zip").write_bytes(data)  # now a smaller, direct file
    time.sleep(1.5)
    assert (b.path / "shared.zip").read_bytes() == data
    os.remove(a.path / "shared.zip")
    time.sleep(1.5)
    assert os.listdir(b.path) == ["base.zip"]


def test_two_mounts_sharing_one_cache_dir(mounter, bucket):
    a = mounter(bucket, "a")
    b = mounter(bucket, "b")  # same --cache-dir as a (what two mounts of one user get)
    data1 = random_bytes(300_000, 21)
    (a.path / "s.bin").write_bytes(data1)
    time.sleep(1.5)
    assert (b.path / "s.bin").read_bytes() == data1
    data2 = random_bytes(300_000, 22)
    (a.path / "s.bin").write_bytes(data2)
    time.sleep(1.5)
    assert (b.path / "s.bin").read_bytes() == data2
    os.chmod(a.path / "s.bin", 0o640)
    os.utime(a.path / "s.bin", (1_000_000_000, 1_000_000_000))
    os.mkdir(a.path / "newdir")
    time.sleep(2.5)  # past the attribute coalescing delay and the TTL
    st = os.stat(b.path / "s.bin")
    assert (oct(st.st_mode & 0o777), int(st.st_mtime)) == (oct(0o640), 1_000_000_000)
    assert sorted(os.listdir(b.path)) == ["newdir", "s.bin"]


# ---------------------------------------------------------------- sizes


def test_stat_shows_original_size_and_blocks_show_stored_bytes(mounter, bucket, tmp_path):
    m = mounter(bucket)
    versions = version_series(3, 1_000_000)
    for i, data in enumerate(versions):
        write(tmp_path / "src" / f"app-{i}.zip", data)
    run("cp", "-r", tmp_path / "src", m.path / "rel")

    def check(root: Path) -> None:
        for i in range(3):
            st = os.stat(root / "rel" / f"app-{i}.zip")
            assert st.st_size == 1_000_000
        kind = run(
            "getfattr", "--only-values", "-n", "user.dg.kind", root / "rel" / "app-2.zip", text=True
        ).stdout
        assert kind == "delta"
        st = os.stat(root / "rel" / "app-2.zip")
        assert st.st_blocks * 512 < st.st_size // 20
        apparent = run("du", "-sb", "--apparent-size", root / "rel", text=True).stdout.split()[0]
        used = run("du", "-sB1", root / "rel", text=True).stdout.split()[0]
        assert int(apparent) >= 3_000_000
        assert int(used) < int(apparent) // 2

    check(m.path)
    check(remount(m, mounter, bucket).path)


# ---------------------------------------------------------------- open modes


def test_rdwr_write_at_offset_and_read_back(mounter, bucket, deltastore, tmp_path):
    deltastore.put(write(tmp_path / "rw", b"0123456789" * 10), "rw.bin")
    m2 = mounter(bucket)
    f = m2.path / "rw.bin"
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.pread(fd, 10, 0) == b"0123456789"
        assert os.pwrite(fd, b"XYZ", 50) == 3
        assert os.pread(fd, 10, 48) == b"89XYZ34567"
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"tail")
        assert os.fstat(fd).st_size == 104
    finally:
        os.close(fd)
    expected = b"0123456789" * 5 + b"XYZ" + (b"0123456789" * 5)[3:] + b"tail"
    assert f.read_bytes() == expected
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"short"
    with open(m2.path / "sparse.bin", "wb") as fh:
        fh.seek(300_000)
        fh.write(b"end")
    run("touch", m2.path / "empty")
    m3 = remount(m2, mounter, bucket, "mnt3")
    assert (m3.path / "rw.bin").read_bytes() == b"short"
    assert (m3.path / "empty").exists()
    assert (m3.path / "empty").stat().st_size == 0
    assert (m3.path / "empty").read_bytes() == b""
    assert (m3.path / "sparse.bin").read_bytes() == b"\0" * 300_000 + b"end"


def test_open_for_write_without_changes_uploads_nothing(mounter, bucket, objectstore):
    m = mounter(bucket)
    (m.path / "plain.txt").write_bytes(b"plain text\n" * 100)
    for i, data in enumerate(version_series(2, 200_000, seed=5)):
        (m.path / f"v{i}.zip").write_bytes(data)
    m2 = remount(m, mounter, bucket)
    before = bucket_objects(objectstore)
    time.sleep(1.1)  # a re-upload would get a later LastModified
    for name in ("plain.txt", "v0.zip", "v1.zip"):
        with open(m2.path / name, "r+b") as fh:
            fh.read(10)
        fd = os.open(m2.path / name, os.O_WRONLY)
        os.close(fd)
    fd = os.open(m2.path / "plain.txt", os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    time.sleep(1.2)  # past the attribute coalescing delay
    assert m2.umount().returncode == 0
    assert bucket_objects(objectstore) == before
