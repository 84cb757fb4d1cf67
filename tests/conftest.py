"""Shared fixtures: a real local S3 server (ministack) for the session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import DeltaSettings, s3_settings_from_env
from core.deltastore import DeltaStore
from core.objectstore import ObjectStore
from dgfs import localserver
from tests import s3kind


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[localserver.LocalServer]:
    """ministack on a free port with a temp data dir; the client env points at it.

    With DGFS_TEST_S3=ceph: the one-node Ceph RGW of scripts/ceph.sh instead (tests/s3kind.py).
    """
    if s3kind.KIND == "ceph":
        server = s3kind.start_ceph()
    else:
        data_dir = tmp_path_factory.mktemp("s3server")
        server = localserver.start(data_dir)
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        if s3kind.KIND == "ceph":
            s3kind.stop_ceph(server)
        else:
            localserver.stop(data_dir)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_settings(s3_server):
    return s3_settings_from_env(max_attempts=2, connect_timeout=2.0, read_timeout=30.0)


@pytest.fixture
def bucket(s3_server, s3_settings) -> str:
    """A new empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    ObjectStore(name, s3_settings).create_bucket()
    return name


@pytest.fixture
def objectstore(bucket, s3_settings) -> ObjectStore:
    return ObjectStore(bucket, s3_settings)


@pytest.fixture
def deltastore(objectstore, tmp_path: Path) -> Iterator[DeltaStore]:
    store = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "work")
    yield store
    store.close()


@pytest.fixture
def mounter(s3_server, tmp_path: Path):
    """Mount buckets for one test; every mount is unmounted at teardown.

    A mount that `dgfs umount` cannot unmount cleanly (busy, failed uploads) is detached
    lazily and fails the test.
    """
    from tests.mounting import Mount, force_unmount, mount

    mounts: list[Mount] = []

    def do_mount(
        bucket: str, name: str = "mnt", *extra: str, check: bool = True, cache: str = "cache"
    ) -> Mount:
        """Mount `bucket` on `tmp_path/name`; `cache` names the cache dir (a new name: cold)."""
        m = mount(bucket, tmp_path / name, tmp_path / cache, *extra, check=check)
        mounts.append(m)
        return m

    yield do_mount
    failures = []
    for m in mounts:
        if os.path.ismount(m.path):
            done = m.umount()
            if done.returncode != 0:
                failures.append(f"{m.path}: {done.stderr.strip() or done.stdout.strip()}")
        force_unmount(m.path)
    if failures:
        pytest.fail("unmount at teardown failed: " + "; ".join(failures))


@pytest.fixture
def mnt(mounter, bucket):
    """A fresh bucket mounted on a temp dir."""
    return mounter(bucket)
