"""Smoke tests of a real mount: cp in and out, rsync twice, stat sizes, xattrs."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.datagen import version_series, write


def test_cp_series_in_and_out(mnt, mounter, tmp_path):
    versions = version_series(5, 1_000_000)
    src = tmp_path / "src"
    for i, data in enumerate(versions):
        write(src / f"app-{i}.zip", data)
    subprocess.run(["cp", "-r", str(src), str(mnt.path / "rel")], check=True)
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(mnt.path / "rel"), str(out)], check=True)
    for i in range(5):
        subprocess.run(["cmp", str(src / f"app-{i}.zip"), str(out / f"app-{i}.zip")], check=True)
        assert (mnt.path / "rel" / f"app-{i}.zip").stat().st_size == 1_000_000
    kind = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.dg.kind", str(mnt.path / "rel" / "app-3.zip")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert kind == "delta"
    assert mnt.umount().returncode == 0
    cold = mounter(mnt.bucket, "cold", cache="cold-cache")
    subprocess.run(["diff", "-r", str(src), str(cold.path / "rel")], check=True)


def test_rsync_twice_transfers_nothing(mnt, mounter, tmp_path):
    src = tmp_path / "tree"
    for i in range(10):
        write(src / f"d{i % 3}" / f"f{i}.txt", f"file {i}\n".encode() * (i * 100 + 1))
    subprocess.run(["rsync", "-a", f"{src}/", f"{mnt.path}/tree/"], check=True)
    second = subprocess.run(
        ["rsync", "-a", "--itemize-changes", "--stats", f"{src}/", f"{mnt.path}/tree/"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Number of regular files transferred: 0" in second.stdout
    subprocess.run(["diff", "-r", str(src), str(mnt.path / "tree")], check=True)
    assert mnt.umount().returncode == 0
    cold = mounter(mnt.bucket, "cold", cache="cold-cache")
    subprocess.run(["diff", "-r", str(src), str(cold.path / "tree")], check=True)


def test_fresh_mount_reads_the_file_that_is_the_reference(mounter, bucket, tmp_path):
    """The first file of a directory is reference.bin + a zero-diff delta of itself."""
    versions = version_series(3, 300_000, seed=4)
    m = mounter(bucket)
    for i, data in enumerate(versions):
        (m.path / f"v{i}.zip").write_bytes(data)
    assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh")
    for i, data in enumerate(versions):
        assert (fresh.path / f"v{i}.zip").read_bytes() == data


def test_exclude_hides_and_refuses(mounter, bucket, objectstore):
    objectstore.put_bytes("keep.txt", b"k", {})
    objectstore.put_bytes("scratch.tmp", b"s", {})
    objectstore.put_bytes("cache/x", b"x", {})
    m = mounter(bucket, "mnt", "--exclude", "*.tmp", "-o", "exclude=cache")
    assert sorted(os.listdir(m.path)) == ["keep.txt"]
    with pytest.raises(PermissionError):
        (m.path / "new.tmp").write_bytes(b"no")


def test_adaptive_policy_through_the_mount(mounter, bucket, tmp_path):
    versions = version_series(6, 200_000, seed=11)
    m = mounter(bucket, "mnt", "--reference-policy", "adaptive")
    for i, data in enumerate(versions):
        (m.path / f"a{i}.zip").write_bytes(data)
    assert m.umount().returncode == 0
    fresh = mounter(bucket, "fresh", "-o", "reference_policy=adaptive")
    assert [(fresh.path / f"a{i}.zip").read_bytes() for i in range(6)] == versions
    assert sorted(os.listdir(fresh.path)) == [f"a{i}.zip" for i in range(6)]  # .dgfs hidden
    assert os.getxattr(fresh.path, "user.dg.dir.policy") == b"adaptive"
    ref_key = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.dg.ref-key", str(fresh.path / "a5.zip")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ref_key.startswith(".dgfs/refs/")  # a hidden reference, never another user file
