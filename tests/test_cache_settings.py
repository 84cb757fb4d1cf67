"""CacheSettings: defaults, DG_CACHE_* parsing, key formats and errors."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from core.cache import CacheConfigError, CacheSettings
from core.cache.settings import derive_key

MASTER = bytes(range(32))
HOME = {"HOME": "/home/u"}


def test_defaults():
    s = CacheSettings.from_env(HOME)
    assert s.backend == "filesystem" and s.key is None and s.ephemeral
    assert s.cache_dir == Path("/home/u/.cache/dgfs")
    assert s.disk_limit_bytes == 2048 * 2**20 and s.memory_limit_bytes == 100 * 2**20
    assert CacheSettings.from_env({"XDG_CACHE_HOME": "/x"}).cache_dir == Path("/x/dgfs")


def test_env_values_and_overrides():
    env = {
        "DG_CACHE_BACKEND": "Memory",
        "DG_CACHE_DIR": "/var/cache/dg",
        "DG_CACHE_DISK_SIZE_MB": "10",
        "DG_CACHE_MEMORY_SIZE_MB": "0.5",
        "DG_CACHE_ENCRYPTION_KEY": "",  # empty means unset (as in deltaglider's docs)
    }
    s = CacheSettings.from_env(env)
    assert s.backend == "memory" and s.cache_dir == Path("/var/cache/dg")
    assert s.disk_limit_bytes == 10 * 2**20 and s.memory_limit_bytes == 2**19 and s.key is None
    s = CacheSettings.from_env(env, disk_limit_bytes=5, cache_dir=None, backend="filesystem")
    assert s.disk_limit_bytes == 5 and s.cache_dir == Path("/var/cache/dg")
    assert s.backend == "filesystem"
    with pytest.raises(TypeError):
        CacheSettings.from_env(env, cache_size=1)


@pytest.mark.parametrize(
    "text",
    [
        base64.urlsafe_b64encode(MASTER).decode(),  # Fernet.generate_key() style
        base64.b64encode(MASTER).decode(),  # openssl rand -base64 32
        base64.b64encode(base64.urlsafe_b64encode(MASTER)).decode(),  # encoded twice
        base64.urlsafe_b64encode(MASTER).decode().rstrip("=") + "\n",
    ],
)
def test_key_formats(text):
    s = CacheSettings.from_env({**HOME, "DG_CACHE_ENCRYPTION_KEY": text})
    assert s.key == derive_key(MASTER) and s.key != MASTER and len(s.key) == 32
    assert not s.ephemeral


def test_fernet_key_accepted():
    key = Fernet.generate_key().decode()
    assert len(CacheSettings.from_env({"DG_CACHE_ENCRYPTION_KEY": key}).key) == 32


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DG_CACHE_BACKEND": "redis"}, "backend"),
        ({"DG_CACHE_DISK_SIZE_MB": "lots"}, "DG_CACHE_DISK_SIZE_MB"),
        ({"DG_CACHE_DISK_SIZE_MB": "0"}, "greater than zero"),
        ({"DG_CACHE_MEMORY_SIZE_MB": "-1"}, "DG_CACHE_MEMORY_SIZE_MB"),
        ({"DG_CACHE_MEMORY_SIZE_MB": "nan"}, "DG_CACHE_MEMORY_SIZE_MB"),
        ({"DG_CACHE_ENCRYPTION_KEY": "short"}, "32-byte"),
        ({"DG_CACHE_ENCRYPTION_KEY": "!" * 44}, "32-byte"),
        ({"DG_CACHE_ENCRYPTION_KEY": "a" * 44, "DG_CACHE_KEY_FILE": "/k"}, "only one"),
        ({"DG_CACHE_KEY_FILE": "/nonexistent/key"}, "cannot read"),
    ],
)
def test_bad_values(env, message):
    with pytest.raises(CacheConfigError, match=message) as info:
        CacheSettings.from_env({**HOME, **env})
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert "!!!!" not in str(info.value)


def test_direct_construction_validates():
    with pytest.raises(CacheConfigError):
        CacheSettings(key=b"short")
    with pytest.raises(CacheConfigError):
        CacheSettings(disk_limit_bytes=0)
    assert CacheSettings(cache_dir="/tmp/x").cache_dir == Path("/tmp/x")


def test_key_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(base64.urlsafe_b64encode(MASTER).decode() + "\n")
    path.chmod(0o644)
    with pytest.raises(CacheConfigError, match="chmod 600"):
        CacheSettings.from_env({"DG_CACHE_KEY_FILE": str(path)})
    path.chmod(0o600)
    assert CacheSettings.from_env({"DG_CACHE_KEY_FILE": str(path)}).key == derive_key(MASTER)
    path.write_bytes(MASTER)
    assert CacheSettings.from_env({"DG_CACHE_KEY_FILE": str(path)}).key == derive_key(MASTER)
    path.write_bytes(b"\xff" * 7)
    with pytest.raises(CacheConfigError, match="raw 32-byte"):
        CacheSettings.from_env({"DG_CACHE_KEY_FILE": str(path)})


def test_reads_process_environment(monkeypatch):
    monkeypatch.setenv("DG_CACHE_MEMORY_SIZE_MB", "7")
    assert CacheSettings.from_env().memory_limit_bytes == 7 * 2**20
    assert os.environ["DG_CACHE_MEMORY_SIZE_MB"] == "7"
