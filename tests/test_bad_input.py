"""Hostile bucket contents and secrets: corrupt objects, garbage metadata, impossible keys.

Objects are damaged directly in S3 (objectstore.put_bytes); reads through a mount must give
EIO with a log line naming the key (or skip impossible names), never bytes that fail SHA-256,
and the daemon must keep serving. Also: no secret in a DEBUG log, private cache/staging modes.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.datagen import random_bytes, version_series

pytestmark = pytest.mark.timeout(240)


def put_versions(deltastore, tmp_path: Path, prefix: str, count: int = 3, seed: int = 31):
    versions = version_series(count, 150_000, seed=seed)
    src = tmp_path / "src.bin"
    for i, data in enumerate(versions):
        src.write_bytes(data)
        deltastore.put(src, f"{prefix}/app-{i}.zip")
    return {f"{prefix}/app-{i}.zip": data for i, data in enumerate(versions)}


def rewrite(objectstore, key: str, body: bytes | None = None, **meta_changes) -> None:
    """Replace an object's body and/or metadata values (None removes a key)."""
    info = objectstore.head(key)
    meta = dict(info.metadata or {})
    for name, value in meta_changes.items():
        name = name.replace("_", "-")
        if value is None:
            meta.pop(name, None)
        else:
            meta[name] = value
    objectstore.put_bytes(key, objectstore.get_bytes(key) if body is None else body, meta)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def read_outcome(path: Path, expected: bytes) -> str:
    """'ok' for the right bytes, 'eio' for EIO; wrong bytes or other errors fail the test."""
    try:
        got = path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO, f"{path}: {exc}"
        return "eio"
    assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest(), f"{path}: bad bytes"
    return "ok"


def still_serving(m) -> None:
    assert os.path.ismount(m.path)
    data = random_bytes(5000, 77)
    (m.path / "alive.bin").write_bytes(data)
    assert (m.path / "alive.bin").read_bytes() == data


def test_corrupt_objects_read_as_eio_naming_the_key(
    mounter, bucket, deltastore, objectstore, tmp_path
):
    flipped_delta = put_versions(deltastore, tmp_path, "fd")
    flipped_ref = put_versions(deltastore, tmp_path, "fr", seed=32)
    put_versions(deltastore, tmp_path, "mr", seed=33)
    direct = random_bytes(100_000, 34)
    src = tmp_path / "direct.bin"
    src.write_bytes(direct)
    deltastore.put(src, "ws/file.bin", force_direct=True)

    key = "fd/app-2.zip.delta"
    body = objectstore.get_bytes(key)
    rewrite(objectstore, key, flip(body, len(body) // 2))
    ref = objectstore.get_bytes("fr/reference.bin")
    rewrite(objectstore, "fr/reference.bin", flip(ref, 1000))
    objectstore.delete("mr/reference.bin")
    rewrite(objectstore, "ws/file.bin", dg_file_sha256="0" * 64)

    m = mounter(bucket)
    assert read_outcome(m.path / "fd/app-2.zip", flipped_delta["fd/app-2.zip"]) == "eio"
    assert read_outcome(m.path / "fd/app-1.zip", flipped_delta["fd/app-1.zip"]) == "ok"
    for name, data in flipped_ref.items():
        assert read_outcome(m.path / name, data) == "eio", name
    assert read_outcome(m.path / "ws/file.bin", direct) == "eio"
    log = m.log_text()
    for named in ("fd/app-2.zip.delta", "fr/reference.bin", "ws/file.bin"):
        assert named in log, f"no log line names {named}"
    still_serving(m)


def test_missing_reference_reads_as_eio(mounter, bucket, deltastore, objectstore, tmp_path):
    files = put_versions(deltastore, tmp_path, "mr", seed=33)
    objectstore.delete("mr/reference.bin")
    m = mounter(bucket)
    for name, data in files.items():
        assert read_outcome(m.path / name, data) == "eio", name
    assert "mr/reference.bin" in m.log_text()
    still_serving(m)


GARBAGE = {
    "dg-file-size": "abc",
    "dgfs-mode": "rwxr-xr-x",
    "dgfs-uid": "-",
    "dgfs-mtime": "yesterday",
    "dg-ref-sha256": "nothex",
}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(("dgfs-mode", "dgfs-uid", "dgfs-mtime"), id="attributes"),
        pytest.param(("dg-file-size",), id="dg-file-size"),
        pytest.param(("dg-ref-sha256",), id="dg-ref-sha256"),
    ],
)
def test_garbage_metadata_never_crashes(fields, mounter, bucket, deltastore, objectstore, tmp_path):
    stored = {}
    for j, field in enumerate(fields):
        prefix = f"gm{j}"
        stored[prefix] = put_versions(deltastore, tmp_path, prefix, seed=35 + j)
        rewrite(objectstore, f"{prefix}/app-1.zip.delta", **{field: GARBAGE[field]})
    m = mounter(bucket)
    for prefix, files in stored.items():
        names = os.listdir(m.path / prefix)
        assert "app-0.zip" in names and "app-2.zip" in names
        outcomes = {}
        for name, data in files.items():
            path = m.path / name
            try:
                path.stat()
            except OSError as exc:
                assert exc.errno == errno.EIO, exc
                outcomes[name] = "eio"
                continue
            outcomes[name] = read_outcome(path, data)
        assert outcomes[f"{prefix}/app-0.zip"] == outcomes[f"{prefix}/app-2.zip"] == "ok"
        log = m.log_text()
        assert "unexpected error" not in log, log[-2000:]
        if outcomes[f"{prefix}/app-1.zip"] == "eio":
            assert f"{prefix}/app-1.zip" in log, "EIO without a log line naming the key"
    still_serving(m)


WEIRD = [
    "odd/../escape.txt",
    "odd/./dot.txt",
    "odd//double.txt",
    "odd/ctl\x01name.txt",
    "odd/new\nline.txt",
    "odd/tab\tname.txt",
    "odd/" + "n" * 1000,
    "odd/ok.txt",
]


def test_impossible_keys_are_skipped_or_served(mounter, bucket, objectstore, tmp_path):
    bodies = {key: f"body of {key!r}".encode() for key in WEIRD}
    for key, body in bodies.items():
        objectstore.put_bytes(key, body, {})
    m = mounter(bucket)
    names = os.listdir(m.path / "odd")
    assert "ok.txt" in names
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and len(name.encode()) <= 255
        key = f"odd/{name}"
        if key in bodies:
            assert (m.path / "odd" / name).read_bytes() == bodies[key]
    assert not (tmp_path / "escape.txt").exists() and "escape.txt" not in os.listdir(m.path)
    log = m.log_text()
    assert "skipped" in log and "odd/" + "n" * 1000 in log
    still_serving(m)


def test_no_secret_in_debug_log(mounter, bucket, deltastore, objectstore, tmp_path, monkeypatch):
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("DG_CACHE_ENCRYPTION_KEY", key)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    files = put_versions(deltastore, tmp_path, "sec", seed=36)
    objectstore.delete("sec/reference.bin")  # an error path too
    m = mounter(bucket, "mnt", "--log-level", "DEBUG")
    versions = version_series(3, 100_000, seed=37)
    (m.path / "w").mkdir()
    for i, data in enumerate(versions):
        (m.path / "w" / f"app-{i}.zip").write_bytes(data)
        assert (m.path / "w" / f"app-{i}.zip").read_bytes() == data
    for name in files:
        try:
            (m.path / name).read_bytes()
        except OSError:
            pass
    assert m.umount().returncode == 0
    log = m.log_text()
    assert len(log) > 1000, "DEBUG log unexpectedly short"
    raw_key = base64.urlsafe_b64decode(key)
    for needle in (key, key.rstrip("="), secret, raw_key.hex()):
        assert needle not in log, "a secret is in the log"


def test_cache_and_staging_are_private(mounter, bucket, deltastore, tmp_path, monkeypatch):
    monkeypatch.setenv("DG_CACHE_ENCRYPTION_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    files = put_versions(deltastore, tmp_path, "pv", seed=38)
    cache = tmp_path / "private-cache"
    m = mounter(bucket, "mnt", "--cache-dir", str(cache))
    for name, data in files.items():  # fill the content cache
        assert (m.path / name).read_bytes() == data
    with open(m.path / "pv" / "open.zip", "wb") as f:
        f.write(random_bytes(200_000, 39))
        f.flush()
        bad = []
        for root, dirs, names in os.walk(cache):
            for d in dirs:
                mode = stat.S_IMODE(os.lstat(os.path.join(root, d)).st_mode)
                if mode != 0o700:
                    bad.append((os.path.join(root, d), oct(mode)))
            for n in names:
                st = os.lstat(os.path.join(root, n))
                if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                    bad.append((os.path.join(root, n), oct(stat.S_IMODE(st.st_mode))))
        staged = [n for _, _, ns in os.walk(cache / "staging") for n in ns]
    assert staged, "no staging file while a file is open for write"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert not bad, bad
