"""rsync-style temp files (`.NAME.XXXXXX`) are uploaded at their rename, under the final name.

Such a file is one created with O_EXCL (as rsync's mkstemp does) under a name ending in a dot
and six letters or digits. close() of it does not upload it; rename() does, and reports a
failed upload. Unrenamed temp files are uploaded after --temp-upload-delay, at fsync() and at
unmount; a failure of that delayed upload is reported by the next close() and `dgfs status`.
Other files (`.bashrc.backup` written by cp) are uploaded at close() as usual.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from tests.faultproxy import FaultProxy, Rule
from tests.mounting import mount_status

pytestmark = pytest.mark.fuse

TEMP = ".data.bin.Ab12Cd"


def _create_temp(path, data: bytes) -> None:
    """Create and write a file as rsync's mkstemp does (O_CREAT | O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _keys(deltastore) -> set[str]:
    """Logical file names in the bucket root (`x` for both `x` and `x.delta`)."""
    return set(deltastore.list_dir("").files)


def test_renamed_temp_file_stored_once_under_final_name(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    _create_temp(m.path / TEMP, b"payload" * 1000)
    os.chmod(m.path / TEMP, 0o640)
    assert _keys(deltastore) == set()  # closed, not uploaded yet
    os.rename(m.path / TEMP, m.path / "data.bin")
    assert _keys(deltastore) == {"data.bin"}
    assert (m.path / "data.bin").stat().st_mode & 0o777 == 0o640
    m.umount()
    again = mounter(bucket, "again")
    assert (again.path / "data.bin").read_bytes() == b"payload" * 1000
    assert (again.path / "data.bin").stat().st_mode & 0o777 == 0o640


def test_unrenamed_temp_file_uploaded_after_the_delay(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "1")
    _create_temp(m.path / TEMP, b"left behind")
    deadline = time.monotonic() + 15
    while TEMP not in _keys(deltastore) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert TEMP in _keys(deltastore)
    assert (m.path / TEMP).read_bytes() == b"left behind"


def test_fsync_of_temp_file_uploads_it(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    fd = os.open(m.path / TEMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        assert TEMP in _keys(deltastore)
    finally:
        os.close(fd)


def test_unmount_uploads_pending_temp_files(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "300")
    _create_temp(m.path / TEMP, b"at unmount")
    assert m.umount().returncode == 0
    assert TEMP in _keys(deltastore)


def test_unlinked_temp_file_never_uploaded(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    _create_temp(m.path / TEMP, b"scratch")
    os.unlink(m.path / TEMP)
    assert m.umount().returncode == 0
    assert _keys(deltastore) == set()


def test_failed_upload_at_rename_is_reported_and_data_kept(s3_server, mounter, bucket):
    with FaultProxy(s3_server.endpoint_url, seed=3) as proxy:
        m = mounter(
            bucket, "m", "--endpoint-url", proxy.url, "--temp-upload-delay", "30",
            "--read-timeout", "2", "--connect-timeout", "2",
        )  # fmt: skip
        _create_temp(m.path / TEMP, b"must survive" * 100)
        proxy.set_rules(Rule("error500", methods={"PUT"}, probability=1.0))
        with pytest.raises(OSError) as failure:
            os.rename(m.path / TEMP, m.path / "data.bin")
        assert failure.value.errno == errno.EIO
        proxy.clear()
        assert (m.path / "data.bin").read_bytes() == b"must survive" * 100
        assert m.umount().returncode == 0  # retried at unmount, now that PUTs pass
    again = mounter(bucket, "again")
    assert (again.path / "data.bin").read_bytes() == b"must survive" * 100


@pytest.mark.parametrize("name", [".bashrc.backup", ".env.backup", ".data.bin.Ab12Cd"])
def test_ordinary_dotfile_is_uploaded_at_close(mounter, bucket, deltastore, name):
    """Written the usual way (O_CREAT | O_TRUNC, no O_EXCL): close() returns after the upload."""
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    (m.path / name).write_bytes(b"settings")
    assert name in _keys(deltastore)


def test_failed_delayed_upload_is_reported_by_status_and_next_close(s3_server, mounter, bucket):
    with FaultProxy(s3_server.endpoint_url, seed=5) as proxy:
        m = mounter(
            bucket, "m", "--endpoint-url", proxy.url, "--temp-upload-delay", "1",
            "--read-timeout", "2", "--connect-timeout", "2",
        )  # fmt: skip
        proxy.set_rules(Rule("error500", methods={"PUT"}, probability=1.0))
        _create_temp(m.path / TEMP, b"kept" * 100)  # close() returns: the upload waits
        deadline = time.monotonic() + 30
        while TEMP not in mount_status(m.path)["failed_uploads"]:
            assert time.monotonic() < deadline, "delayed upload failure not in dgfs status"
            time.sleep(0.3)
        fd = os.open(m.path / TEMP, os.O_WRONLY | os.O_APPEND)
        with pytest.raises(OSError) as failure:
            os.close(fd)
        assert failure.value.errno == errno.EIO
        proxy.clear()
        assert m.umount().returncode == 0  # retried at unmount, now that PUTs pass
    again = mounter(bucket, "again")
    assert (again.path / TEMP).read_bytes() == b"kept" * 100
