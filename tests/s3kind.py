"""Which S3 server the suite runs against: ministack (default) or Ceph RGW.

`DGFS_TEST_S3=ceph` makes the `s3_server` fixture run `scripts/ceph.sh start` (a one-node Ceph
with RGW under data/ceph/, installed and created on first use, ~17 s; ~6 s when it exists) and
use its environment. A cluster the fixture started is stopped at the end of the session unless
`DGFS_TEST_S3_KEEP=1`; one that was already running is left alone.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CEPH_SCRIPT = ROOT / "scripts" / "ceph.sh"
KIND = os.environ.get("DGFS_TEST_S3", "ministack").strip().lower() or "ministack"
if KIND not in ("ministack", "ceph"):
    raise RuntimeError(f"DGFS_TEST_S3={KIND!r}: expected ministack or ceph")

ministack_only = pytest.mark.skipif(
    KIND != "ministack", reason="tests the local ministack server itself"
)


@dataclass(frozen=True)
class CephServer:
    """The running one-node Ceph: what tests use of a LocalServer (endpoint, env)."""

    endpoint_url: str
    variables: dict[str, str] = field(default_factory=dict)
    started_here: bool = False
    data_dir: Path = ROOT / "data" / "ceph"
    pid: int = 0

    def env(self) -> dict[str, str]:
        return dict(self.variables)


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and sep:
            out[name] = value
    return out


def start_ceph() -> CephServer:
    running = subprocess.run(["bash", str(CEPH_SCRIPT), "status"], capture_output=True, text=True)
    done = subprocess.run(
        ["bash", str(CEPH_SCRIPT), "start"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/ceph.sh start failed: {done.stderr.strip()[-2000:]}")
    env = _exports(done.stdout)
    return CephServer(env["AWS_ENDPOINT_URL"], env, started_here=running.returncode != 0)


def stop_ceph(server: CephServer) -> None:
    if server.started_here and os.environ.get("DGFS_TEST_S3_KEEP") != "1":
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop"], capture_output=True, timeout=120)
