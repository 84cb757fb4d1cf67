"""Stats xattrs on a real mount, compared with `dgfs stats --json` and a direct boto3 count."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import boto3
import pytest

from tests.datagen import random_bytes, version_series


def _getfattr(path) -> dict[str, str]:
    proc = subprocess.run(
        ["getfattr", "-d", "--absolute-names", "-m", "user.dg", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    values = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value.strip('"')
    return values


def test_file_dir_and_bucket_xattrs_agree_with_stats(mnt, bucket, objectstore, s3_server):
    rel = mnt.path / "rel"
    rel.mkdir()
    for i, data in enumerate(version_series(4, 200_000)):
        (rel / f"app-{i}.zip").write_bytes(data)
    (rel / "noise.bin").write_bytes(random_bytes(300_000, 9))
    objectstore.put_bytes("rel/plain.txt", b"from another tool", {})
    (mnt.path / "top.txt").write_bytes(b"small")

    delta = _getfattr(rel / "app-2.zip")
    assert delta["user.dg.kind"] == "delta"
    assert delta["user.dg.original-size"] == "200000"
    assert int(delta["user.dg.stored-size"]) < 5000
    assert delta["user.dg.ref-key"] == "rel/reference.bin"
    direct = _getfattr(rel / "noise.bin")
    assert direct["user.dg.kind"] == "direct" and direct["user.dg.ratio"] == "1.0000"

    s3 = boto3.client("s3")
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="rel/")["Contents"]
    stored = sum(o["Size"] for o in objects if not o["Key"].endswith("/"))
    d = _getfattr(rel)
    assert d["user.dg.dir.file-count"] == "6"
    assert (d["user.dg.dir.delta-count"], d["user.dg.dir.direct-count"]) == ("4", "1")
    assert d["user.dg.dir.plain-count"] == "1"
    assert d["user.dg.dir.stored-bytes"] == str(stored)
    assert d["user.dg.dir.original-bytes"] == str(4 * 200_000 + 300_000 + 17)
    assert d["user.dg.dir.policy"] == "deltaglider"
    time.sleep(1.2)  # let the kernel's cached attributes of `rel` (TTL 1 s) expire
    du = subprocess.run(["du", "-s", "-B1", str(rel)], capture_output=True, text=True, check=True)
    assert abs(int(du.stdout.split()[0]) - stored) < 512 * 8  # du = stored bytes (block rounding)

    stats = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dgfs.cli", "stats", f"s3://{bucket}", "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        ).stdout
    )
    root = _getfattr(mnt.path)
    for _ in range(50):  # the bucket-wide figures are computed in the background
        if "user.dg.bucket.stored-bytes" in root:
            break
        subprocess.run(["sleep", "0.1"])
        root = _getfattr(mnt.path)
    assert root["user.dg.bucket.stored-bytes"] == str(stats["compressed_size"])
    assert root["user.dg.bucket.file-count"] == "7"
    assert root["user.dg.bucket.policy"] == stats["policy"] == "deltaglider"


def test_user_xattrs_persist_and_dg_writes_are_ignored(mounter, bucket, tmp_path):
    m = mounter(bucket)
    f = m.path / "f.txt"
    f.write_bytes(b"hello")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.dg.kind", b"forged")
    assert os.getxattr(f, "user.dg.kind") == b"direct"
    assert m.umount().returncode == 0
    again = mounter(bucket, "again")
    assert os.getxattr(again.path / "f.txt", "user.color") == b"blue"
    out = tmp_path / "out"
    subprocess.run(["rsync", "-aX", f"{again.path}/", f"{out}/"], check=True)
    assert os.getxattr(out / "f.txt", "user.color") == b"blue"
    subprocess.run(["rsync", "-aX", f"{out}/", f"{again.path}/copy/"], check=True)
    assert os.getxattr(again.path / "copy" / "f.txt", "user.color") == b"blue"
    assert os.getxattr(again.path / "copy" / "f.txt", "user.dg.kind") == b"direct"


def test_other_namespaces_are_unsupported_so_ls_stops_probing(mnt):
    """security.*/system.* answer ENOTSUP (user.* absent: ENODATA), so `ls -l` (coreutils
    caches "unsupported" per device) probes ACL and SELinux label once, not twice per file."""
    d = mnt.path / "many"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}.txt").write_bytes(b"x")
    (d / "f00.txt").write_bytes(b"y")
    os.setxattr(d / "f00.txt", "user.color", b"red")
    assert os.getxattr(d / "f00.txt", "user.color") == b"red"
    for name, expected in [
        ("security.selinux", errno.ENOTSUP),
        ("system.posix_acl_access", errno.ENOTSUP),
        ("trusted.x", errno.ENOTSUP),
        ("user.absent", errno.ENODATA),
    ]:
        with pytest.raises(OSError) as exc:
            os.getxattr(d / "f01.txt", name)
        assert exc.value.errno == expected, name
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=getxattr,lgetxattr", "ls", "-l", str(d)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 41  # "total" + 40 files
    probes = [line for line in proc.stderr.splitlines() if "getxattr(" in line]
    assert 1 <= len(probes) <= 4, probes


def test_status_names_keys_to_the_mount_owner_only(mounter, bucket):
    """Under allow_other, another local user reading the status gets counts, not key names."""
    m = mounter(bucket, "m", "--allow-other", "--temp-upload-delay", "60")
    secret = ".secret-plan.Ab12Cd"  # an rsync temp file: a pending upload once closed
    os.close(os.open(m.path / secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    mine = json.loads(os.getxattr(m.path, "user.dg.mount.status"))
    assert mine["pending_uploads"] == [secret]
    root_fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        theirs = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "getfattr", "--only-values", "-n", "user.dg.mount.status",
             f"/proc/self/fd/{root_fd}"],
            pass_fds=[root_fd], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(root_fd)
    assert theirs.returncode == 0, theirs.stderr
    assert "secret-plan" not in theirs.stdout
    status = json.loads(theirs.stdout)
    assert status["pending_uploads"] == 1 and status["keys_hidden"] is True
    assert status["failed_uploads"] == 0
