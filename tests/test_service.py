"""Running as a service: systemd's notify protocol and the Prometheus endpoint, against real
mounts (the test plays systemd's side of NOTIFY_SOCKET, and Prometheus' scrape)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from dgfs import sdnotify
from tests.datagen import version_series, write
from tests.mounting import DGFS, force_unmount

pytestmark = pytest.mark.fuse


def _recv_until(sock: socket.socket, wanted: str, timeout: float, seen: list[dict]) -> dict:
    """Read notify datagrams until one has the field `wanted` (e.g. 'READY'); all kept in
    `seen`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        seen.append(fields)
        if wanted in fields:
            return fields
    raise AssertionError(f"no {wanted}= from the mount within {timeout}s; got {seen}")


def test_sdnotify_path_and_abstract_sockets(tmp_path, monkeypatch):
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1", "STATUS=a\nb")
        assert sock.recv(100) == b"READY=1\nSTATUS=a b"
    name = f"dgfs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    assert sdnotify.watchdog_interval() == 2.0


def test_foreground_mount_speaks_systemd_notify(s3_server, bucket, tmp_path):
    """READY=1 with MAINPID once mounted, STATUS= while serving (pending/failed uploads),
    STOPPING=1 when `dgfs umount` unmounts; the service exits 0."""
    where = tmp_path / "mnt"
    where.mkdir()
    log = tmp_path / "mnt.log"
    name = f"dgfs-notify-{uuid.uuid4().hex}"  # abstract, as systemd's own sockets may be
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "DG_NOTIFY_INTERVAL": "0.5"}
    args = [bucket, str(where), "--foreground", "--log-file", str(log)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen([*DGFS, "mount", *args], env=env, stdin=subprocess.DEVNULL)
    seen: list[dict] = []
    try:
        ready = _recv_until(sock, "READY", 60, seen)
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        assert os.path.ismount(where)
        assert "0 upload(s) pending" in ready["STATUS"]
        (where / "a.txt").write_bytes(b"hello")
        status = _recv_until(sock, "STATUS", 10, seen)
        assert re.search(r"\d+ upload\(s\) pending, 0 failed", status["STATUS"]), status
        assert f"s3://{bucket}/" in status["STATUS"]
        done = subprocess.run(
            [*DGFS, "umount", str(where)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        stopping = _recv_until(sock, "STOPPING", 30, seen)
        assert stopping["STOPPING"] == "1"
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        sock.close()
        force_unmount(where)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    """`name{labels}` → value from the text exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint_moves_with_mount_activity(mounter, bucket, tmp_path):
    src = tmp_path / "src"
    for i, data in enumerate(version_series(3, 400_000)):
        write(src / f"app-{i}.zip", data)
    port = _free_port()
    m = mounter(bucket, "mnt", "--metrics-addr", f"127.0.0.1:{port}")
    before = _scrape(port)
    assert before[f'dgfs_mount_info{{bucket="{bucket}",prefix=""}}'] == 1
    assert before["dgfs_uploads_pending"] == 0
    subprocess.run(["cp", "-r", str(src), str(m.path / "rel")], check=True)
    subprocess.run([*DGFS, "status", str(m.path), "--flush"], check=True, capture_output=True)
    after = _scrape(port)
    assert after['dgfs_s3_requests_total{kind="put",outcome="ok"}'] >= 3
    assert after["dgfs_s3_uploaded_bytes_total"] > 0
    assert after["dgfs_delta_attempts_total"] >= 2
    assert after["dgfs_delta_stored_total"] >= 2
    assert after["dgfs_delta_saved_bytes_total"] > 300_000
    assert after["dgfs_uploads_pending"] == 0
    assert after["dgfs_uploads_failed"] == 0
    assert after['dgfs_fuse_operation_seconds_count{op="write"}'] > 0
    assert after['dgfs_fuse_operation_seconds_bucket{le="+Inf",op="create"}'] == 3
    assert after['dgfs_fuse_operation_seconds_sum{op="write"}'] > 0
    assert "process_resident_memory_bytes" in after

    # a second mount with a cold cache reads through S3 (downloads, misses)
    cold_port = _free_port()
    cold = mounter(bucket, "cold", "-o", f"metrics_addr=127.0.0.1:{cold_port}", cache="cold-cache")
    out = subprocess.run(["cat", str(cold.path / "rel" / "app-2.zip")], capture_output=True)
    assert out.stdout == (src / "app-2.zip").read_bytes()
    read = _scrape(cold_port)
    assert read['dgfs_s3_requests_total{kind="get",outcome="ok"}'] >= 2
    assert read["dgfs_s3_downloaded_bytes_total"] > 0
    assert read["dgfs_cache_misses_total"] > 0
    assert read['dgfs_fuse_operation_seconds_count{op="read"}'] > 0
    assert read['dgfs_cache_bytes{tier="memory"}'] + read['dgfs_cache_bytes{tier="disk"}'] > 0
    assert cold.umount().returncode == 0
    with pytest.raises(OSError):  # the endpoint goes away with the mount
        _scrape(cold_port)


def test_metrics_addr_refused_when_busy_or_malformed(mounter, bucket):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bad = mounter(bucket, "m1", "--metrics-addr", f"127.0.0.1:{port}", check=False)
        assert not os.path.ismount(bad.path)
    bad = subprocess.run(
        [*DGFS, "mount", bucket, "/nonexistent", "--metrics-addr", "127.0.0.1:notaport"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "HOST:PORT" in bad.stderr
