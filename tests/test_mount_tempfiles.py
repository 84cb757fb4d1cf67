"""rsync-style temp files (`.NAME.XXXXXX`) are uploaded at their rename, under the final name.

close() of such a file does not upload it; rename() does, and reports a failed upload.
Unrenamed temp files are uploaded after --temp-upload-delay, at fsync() and at unmount.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from tests.faultproxy import FaultProxy, Rule

pytestmark = pytest.mark.fuse

TEMP = ".data.bin.Ab12Cd"


def _keys(deltastore) -> set[str]:
    """Logical file names in the bucket root (`x` for both `x` and `x.delta`)."""
    return set(deltastore.list_dir("").files)


def test_renamed_temp_file_stored_once_under_final_name(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    (m.path / TEMP).write_bytes(b"payload" * 1000)
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
    (m.path / TEMP).write_bytes(b"left behind")
    deadline = time.monotonic() + 15
    while TEMP not in _keys(deltastore) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert TEMP in _keys(deltastore)
    assert (m.path / TEMP).read_bytes() == b"left behind"


def test_fsync_of_temp_file_uploads_it(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    fd = os.open(m.path / TEMP, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        assert TEMP in _keys(deltastore)
    finally:
        os.close(fd)


def test_unmount_uploads_pending_temp_files(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "300")
    (m.path / TEMP).write_bytes(b"at unmount")
    assert m.umount().returncode == 0
    assert TEMP in _keys(deltastore)


def test_unlinked_temp_file_never_uploaded(mounter, bucket, deltastore):
    m = mounter(bucket, "m", "--temp-upload-delay", "30")
    (m.path / TEMP).write_bytes(b"scratch")
    os.unlink(m.path / TEMP)
    assert m.umount().returncode == 0
    assert _keys(deltastore) == set()


def test_failed_upload_at_rename_is_reported_and_data_kept(s3_server, mounter, bucket):
    with FaultProxy(s3_server.endpoint_url, seed=3) as proxy:
        m = mounter(
            bucket, "m", "--endpoint-url", proxy.url, "--temp-upload-delay", "30",
            "--read-timeout", "2", "--connect-timeout", "2",
        )  # fmt: skip
        (m.path / TEMP).write_bytes(b"must survive" * 100)
        proxy.set_rules(Rule("error500", methods={"PUT"}, probability=1.0))
        with pytest.raises(OSError) as failure:
            os.rename(m.path / TEMP, m.path / "data.bin")
        assert failure.value.errno == errno.EIO
        proxy.clear()
        assert (m.path / "data.bin").read_bytes() == b"must survive" * 100
        assert m.umount().returncode == 0  # retried at unmount, now that PUTs pass
    again = mounter(bucket, "again")
    assert (again.path / "data.bin").read_bytes() == b"must survive" * 100
