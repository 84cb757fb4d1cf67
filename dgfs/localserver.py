"""Start and stop the local default S3 server: ministack (PyPI), persistent, on 127.0.0.1.

ministack keeps objects and their metadata on disk (`S3_PERSIST=1`), answers conditional PUTs,
multipart, delimited/paginated listings and ranged GETs. It checks no credentials and does not
enforce S3's 2 KiB metadata limit (dgfs enforces that itself).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.proc import pid_alive

LOCAL_ACCESS_KEY = "dgfs-local"
LOCAL_SECRET_KEY = "dgfs-local-secret"
LOCAL_REGION = "us-east-1"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalServer:
    """A running local server: its endpoint, process id and data directory."""

    endpoint_url: str
    pid: int
    data_dir: Path

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and dgfs) at this server."""
        return client_env(self.endpoint_url)


def client_env(endpoint_url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_DEFAULT_REGION": LOCAL_REGION,
    }


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def _state_file(data_dir: Path) -> Path:
    return data_dir / "server.state"


def running(data_dir: Path) -> LocalServer | None:
    """The server started on `data_dir` if it is still alive."""
    state = _state_file(data_dir)
    if not state.exists():
        return None
    pid_text, _, endpoint = state.read_text().strip().partition(" ")
    if not pid_text.isdigit() or not pid_alive(int(pid_text)):
        return None
    return LocalServer(endpoint, int(pid_text), data_dir)


def start(
    data_dir: Path, port: int | None = None, persist: bool = True, timeout: float = 30.0
) -> LocalServer:
    """Start ministack on 127.0.0.1 with its data under `data_dir` (idempotent)."""
    data_dir = data_dir.resolve()
    existing = running(data_dir)
    if existing is not None:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "SERVICES": "s3",
        "IOT_MTLS_ENABLED": "0",
        "GATEWAY_PORT": str(port),
        "BIND_HOST": HOST,
        "S3_PERSIST": "1" if persist else "0",
        "S3_DATA_DIR": str(data_dir / "s3"),
        "STATE_DIR": str(data_dir / "state"),
    }
    log = (data_dir / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ministack"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not _accepting(port):
        if proc.poll() is not None:
            raise RuntimeError(f"local S3 server exited at start; see {data_dir / 'server.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"local S3 server not ready after {timeout:.0f}s")
        time.sleep(0.05)
    server = LocalServer(f"http://{HOST}:{port}", proc.pid, data_dir)
    _state_file(data_dir).write_text(f"{proc.pid} {server.endpoint_url}\n")
    return server


def stop(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the server started on `data_dir`; False if none was running."""
    server = running(data_dir.resolve())
    if server is None:
        return False
    kill(server.pid, timeout)
    _state_file(server.data_dir).unlink(missing_ok=True)
    return True


def kill(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal a server process (group) and wait for it to go, SIGKILL after `timeout`."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
