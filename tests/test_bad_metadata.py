"""Hostile metadata from the bucket (issue #15): bad fields, foreign special bits, huge symlinks,
references outside the deltaspace, control characters in keys, and the maintenance CLI.

Objects are written with boto3-level metadata through `objectstore`, then listed and read
through a real mount (or the CLI as a subprocess).
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from pathlib import Path

import pytest

from core import layout
from tests.datagen import random_bytes, version_series
from tests.test_stats import run_cli

pytestmark = pytest.mark.timeout(240)


def rfc2047(text: str) -> str:
    """How a non-ASCII metadata value reaches S3 (and comes back from AWS)."""
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def put_versions(deltastore, tmp_path: Path, prefix: str, count: int = 3, seed: int = 51):
    versions = version_series(count, 100_000, seed=seed)
    src = tmp_path / "src.bin"
    for i, data in enumerate(versions):
        src.write_bytes(data)
        deltastore.put(src, f"{prefix}/app-{i}.zip")
    return {f"{prefix}/app-{i}.zip": data for i, data in enumerate(versions)}


def with_meta(objectstore, key: str, **changes: str) -> None:
    """Rewrite an object's metadata in place (`x_y=...` sets `x-y`)."""
    info = objectstore.head(key)
    meta = dict(info.metadata or {})
    meta.update({name.replace("_", "-"): value for name, value in changes.items()})
    objectstore.put_bytes(key, objectstore.get_bytes(key), meta)


BAD_FIELDS = {
    "mtime-inf.txt": {"mtime": "inf"},
    "mtime-nan.txt": {"mtime": "nan"},
    "mtime-huge.txt": {"mtime": "1e300"},
    "mtime-year.txt": {"mtime": "99999-01-01T00:00:00Z"},
    "dgfs-mtime-super.txt": {"dgfs-mtime": rfc2047("²")},
    "dgfs-mtime-huge.txt": {"dgfs-mtime": str(2**70)},
    "mode-huge.txt": {"dgfs-mode": str(2**40)},
    "mode-negative.txt": {"mode": "-1"},
    "uid-huge.txt": {"dgfs-uid": str(2**40)},
    "gid-huge.txt": {"gid": str(2**33)},
    "uid-super.txt": {"dgfs-uid": rfc2047("²")},
}


def test_bad_fields_are_ignored_not_a_failed_listing(
    mounter, bucket, deltastore, objectstore, tmp_path
):
    for name, meta in BAD_FIELDS.items():
        objectstore.put_bytes(f"bad/{name}", b"body of " + name.encode(), meta)
    objectstore.put_bytes("bad/good.txt", b"good", {"dgfs-mode": str(stat.S_IFREG | 0o640)})
    files = put_versions(deltastore, tmp_path, "bad/v")
    with_meta(objectstore, "bad/v/app-1.zip.delta", dg_file_size=rfc2047("²"))
    with_meta(objectstore, "bad/v/app-2.zip.delta", dg_file_size=str(2**70))
    m = mounter(bucket)
    assert sorted(os.listdir(m.path / "bad")) == sorted([*BAD_FIELDS, "good.txt", "v"])
    for entry in os.scandir(m.path / "bad"):  # `ls -l`
        st = entry.stat(follow_symlinks=False)
        if entry.name in BAD_FIELDS:
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644, entry.name
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), entry.name
            assert 0 < st.st_mtime < 2**40, entry.name
            assert (m.path / "bad" / entry.name).read_bytes() == b"body of " + entry.name.encode()
    assert stat.S_IMODE(os.stat(m.path / "bad/good.txt").st_mode) == 0o640
    assert sorted(os.listdir(m.path / "bad/v")) == ["app-0.zip", "app-1.zip", "app-2.zip"]
    assert (m.path / "bad/v/app-0.zip").read_bytes() == files["bad/v/app-0.zip"]
    for name in ("app-1.zip", "app-2.zip"):
        assert os.stat(m.path / "bad/v" / name).st_size == 0
        with pytest.raises(OSError) as exc:
            (m.path / "bad/v" / name).read_bytes()
        assert exc.value.errno == errno.EIO
    log = m.log_text()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("bad/mtime-inf.txt: ignoring metadata field mtime") == 1, log[-3000:]
    assert "bad/uid-huge.txt: ignoring metadata field dgfs-uid" in log


def foreign(kind: int, perm: int) -> dict[str, str]:
    """s3fs-style metadata: `mode` in decimal."""
    return {"mode": str(kind | perm), "uid": "0", "gid": "0"}


SPECIAL = {
    "suid.bin": foreign(stat.S_IFREG, 0o4755),
    "sgid.bin": foreign(stat.S_IFREG, 0o2755),
    "sticky.bin": foreign(stat.S_IFREG, 0o1755),
    "chardev": foreign(stat.S_IFCHR, 0o666),
    "blockdev": foreign(stat.S_IFBLK, 0o660),
    "fifo": foreign(stat.S_IFIFO, 0o644),
    "socket": foreign(stat.S_IFSOCK, 0o644),
    "own-chardev": {"dgfs-mode": str(stat.S_IFCHR | 0o666)},
    "own-dir-type": {"dgfs-mode": str(stat.S_IFDIR | 0o755)},
}


def kernel_flags(path: Path) -> set[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        if line.split()[1] == str(path):
            return set(line.split()[3].split(","))
    raise AssertionError(f"{path} not in /proc/mounts")


def test_foreign_special_bits_and_types_need_suid_dev(mounter, bucket, objectstore):
    for name, meta in SPECIAL.items():
        # devices, FIFOs and sockets are empty objects (as s3fs and mknod store them); a
        # non-empty one ("own-chardev") is a regular file whatever its mode says
        kind = stat.S_IFMT(int(meta.get("mode", meta.get("dgfs-mode"))))
        body = b"" if name != "own-chardev" and layout.is_special(kind) else b"x"
        objectstore.put_bytes(f"sp/{name}", body, meta)
    objectstore.put_bytes("sp/dir/", b"", foreign(stat.S_IFDIR, 0o3777))
    m = mounter(bucket)
    assert {"nosuid", "nodev"} <= kernel_flags(m.path)
    (m.path / "sp/own.bin").write_bytes(b"mine")
    os.chmod(m.path / "sp/own.bin", 0o4755)  # dgfs's own setuid bit is kept
    modes = {e.name: e.stat(follow_symlinks=False).st_mode for e in os.scandir(m.path / "sp")}
    for name in SPECIAL:
        assert stat.S_ISREG(modes[name]), (name, oct(modes[name]))
        assert not modes[name] & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), name
    assert stat.S_IMODE(modes["suid.bin"]) == 0o755
    assert stat.S_IMODE(modes["dir"]) == 0o777 and stat.S_ISDIR(modes["dir"])
    assert (m.path / "sp/own-dir-type").read_bytes() == b"x"
    assert m.umount().returncode == 0

    m = mounter(bucket, "mnt2")
    assert stat.S_IMODE(os.stat(m.path / "sp/own.bin").st_mode) == 0o4755
    assert m.umount().returncode == 0

    m = mounter(bucket, "mnt3", "-o", "suid,dev")
    assert not {"nosuid", "nodev"} & kernel_flags(m.path)
    modes = {e.name: e.stat(follow_symlinks=False).st_mode for e in os.scandir(m.path / "sp")}
    assert stat.S_IMODE(modes["suid.bin"]) == 0o4755
    assert stat.S_IMODE(modes["sgid.bin"]) == 0o2755
    assert stat.S_IMODE(modes["dir"]) == 0o3777
    assert stat.S_ISCHR(modes["chardev"]) and stat.S_ISFIFO(modes["fifo"])
    assert stat.S_ISREG(modes["own-dir-type"]) and stat.S_ISREG(modes["own-chardev"])


def test_symlink_bodies_are_capped(mounter, bucket, objectstore):
    link = str(stat.S_IFLNK | 0o777)
    objectstore.put_bytes("ln/small", b"target.txt", {"dgfs-mode": link})
    objectstore.put_bytes("ln/s3fs", b"other.txt", {"mode": link})
    objectstore.put_bytes("ln/exact", b"t" * 4096, {"dgfs-mode": link})
    big = random_bytes(5 * 2**20, 52)
    objectstore.put_bytes("ln/huge", big, {"dgfs-mode": link})
    m = mounter(bucket)
    assert os.readlink(m.path / "ln/small") == "target.txt"
    assert os.readlink(m.path / "ln/s3fs") == "other.txt"
    modes = {e.name: e.stat(follow_symlinks=False).st_mode for e in os.scandir(m.path / "ln")}
    assert stat.S_ISLNK(modes["exact"])
    assert stat.S_ISREG(modes["huge"]), oct(modes["huge"])
    with pytest.raises(OSError) as exc:
        os.readlink(m.path / "ln/huge")
    assert exc.value.errno == errno.EINVAL
    assert (m.path / "ln/huge").read_bytes() == big


def test_reference_outside_the_deltaspace_is_refused(
    mounter, bucket, deltastore, objectstore, tmp_path
):
    files = put_versions(deltastore, tmp_path, "a")
    key = "a/app-1.zip.delta"
    meta = objectstore.head(key).metadata
    body = objectstore.get_bytes(key)
    assert meta["dg-ref-key"] == "a/reference.bin"
    objectstore.put_bytes("b/stolen.zip.delta", body, meta)  # its reference is in a/
    objectstore.put_bytes("b/up.zip.delta", body, {**meta, "dg-ref-key": "b/../a/reference.bin"})
    objectstore.put_bytes("b/dot.zip.delta", body, {**meta, "dg-ref-key": "b/./reference.bin"})
    proxy = {k: v for k, v in meta.items() if k != "dg-ref-key"}
    objectstore.put_bytes("b/path.zip.delta", body, {**proxy, "dg-ref-path": "../a/reference.bin"})
    m = mounter(bucket)
    assert (m.path / "a/app-1.zip").read_bytes() == files["a/app-1.zip"]
    for name in ("stolen.zip", "up.zip", "dot.zip", "path.zip"):
        with pytest.raises(OSError) as exc:
            (m.path / "b" / name).read_bytes()
        assert exc.value.errno == errno.EIO, name
    log = m.log_text()
    assert "b/stolen.zip.delta: dg-ref-key" in log, log[-3000:]
    result = run_cli("verify", f"s3://{bucket}/b")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "FAILED b/stolen.zip.delta: dg-ref-key" in result.stdout, result.stdout


def test_control_characters_in_keys_are_escaped_in_the_log(mounter, bucket, objectstore):
    evil = "esc/" + "n" * 300 + "\x1b[2J\nERROR dgfs.fs: forged line\r\x85"
    objectstore.put_bytes(evil, b"x", {})
    m = mounter(bucket)
    os.listdir(m.path / "esc")
    log = m.log_text()
    assert "forged line" in log, log[-2000:]
    assert "\nERROR dgfs.fs: forged" not in log and "\x1b" not in log and "\r" not in log
    assert "\\x1b[2J\\nERROR dgfs.fs: forged line\\r\\x85" in log


def test_cli_reports_bad_metadata_in_one_line(bucket, deltastore, objectstore, tmp_path):
    put_versions(deltastore, tmp_path, "c")
    with_meta(objectstore, "c/app-1.zip.delta", dg_file_size=rfc2047("²"), mtime="inf")
    with_meta(objectstore, "c/app-2.zip.delta", dg_ref_key="elsewhere/reference.bin")
    objectstore.put_bytes("c/plain.txt", b"plain", {"dgfs-mtime": rfc2047("²"), "mode": "-1"})
    for args in (("stats", "--detailed"), ("gc",), ("verify",)):
        result = run_cli(*args, f"s3://{bucket}")
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode in (0, 1), (args, result.stderr)
        if result.returncode:
            lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("WARNING: ")]
            assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
    verify = run_cli("verify", f"s3://{bucket}")
    assert verify.returncode == 1
    assert "c/app-1.zip.delta: dg-file-size" in verify.stdout, verify.stdout
    assert "c/app-2.zip.delta: dg-ref-key" in verify.stdout, verify.stdout
    assert "WARNING: c/plain.txt: ignoring metadata field dgfs-mtime" in verify.stderr
