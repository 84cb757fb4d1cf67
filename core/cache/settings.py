"""Cache settings: defaults, environment parsing and encryption-key handling."""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.cache.errors import CacheConfigError

MiB = 2**20
KEY_SIZE = 32
BACKENDS = ("filesystem", "memory")
HKDF_INFO = b"dgfs cache v1: AES-256-GCM key"
_B64 = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True, repr=False)
class CacheSettings:
    """How and where the read cache stores entries. `key` is the 32-byte AES key."""

    backend: str = "filesystem"
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    disk_limit_bytes: int = 2048 * MiB
    memory_limit_bytes: int = 100 * MiB
    key: bytes | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise CacheConfigError(f"cache backend must be one of {BACKENDS}, not {self.backend!r}")
        if isinstance(self.cache_dir, str):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        if not isinstance(self.disk_limit_bytes, int) or self.disk_limit_bytes <= 0:
            raise CacheConfigError("cache disk limit must be a positive number of bytes")
        if not isinstance(self.memory_limit_bytes, int) or self.memory_limit_bytes < 0:
            raise CacheConfigError("cache memory limit must be a non-negative number of bytes")
        if self.key is not None and (not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE):
            raise CacheConfigError(f"cache encryption key must be {KEY_SIZE} bytes")

    def __repr__(self) -> str:
        key = "<ephemeral>" if self.key is None else "<hidden>"
        return (
            f"CacheSettings(backend={self.backend!r}, cache_dir={self.cache_dir!r}, "
            f"disk_limit_bytes={self.disk_limit_bytes}, "
            f"memory_limit_bytes={self.memory_limit_bytes}, key={key})"
        )

    @property
    def ephemeral(self) -> bool:
        """True when the key is random per process (the cache does not outlive it)."""
        return self.key is None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, key_file: Path | None = None, **overrides: Any
    ) -> CacheSettings:
        """Settings from DG_CACHE_* variables; overrides (field names) win when not None, and
        `key_file` (e.g. `--cache-key-file`) wins over DG_CACHE_KEY_FILE."""
        env = os.environ if env is None else env
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown cache setting(s): {', '.join(sorted(unknown))}")

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        values: dict[str, Any] = {}
        if (backend := get("DG_CACHE_BACKEND")) is not None:
            values["backend"] = backend.lower()
        cache_dir = get("DG_CACHE_DIR")
        values["cache_dir"] = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(env)
        if (disk := get("DG_CACHE_DISK_SIZE_MB")) is not None:
            values["disk_limit_bytes"] = _megabytes("DG_CACHE_DISK_SIZE_MB", disk, positive=True)
        if (memory := get("DG_CACHE_MEMORY_SIZE_MB")) is not None:
            values["memory_limit_bytes"] = _megabytes("DG_CACHE_MEMORY_SIZE_MB", memory)
        key_text = get("DG_CACHE_ENCRYPTION_KEY")
        key_file = str(key_file) if key_file is not None else get("DG_CACHE_KEY_FILE")
        if key_text and key_file:
            raise CacheConfigError("set only one of DG_CACHE_ENCRYPTION_KEY and DG_CACHE_KEY_FILE")
        if key_text:
            values["key"] = derive_key(parse_key_text(key_text, "DG_CACHE_ENCRYPTION_KEY"))
        elif key_file:
            values["key"] = derive_key(read_key_file(Path(key_file).expanduser()))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/dgfs, else ~/.cache/dgfs."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "dgfs"
    home = env.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".cache" / "dgfs"


def derive_key(master: bytes) -> bytes:
    """The AES-256 cache key: HKDF-SHA256 of the configured 32-byte key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=HKDF_INFO).derive(
        master
    )


def parse_key_text(text: str, source: str) -> bytes:
    """Decode a base64 (url-safe or standard) 32-byte key, also accepting a Fernet key that
    was base64-encoded once more (as deltaglider's docs show)."""
    raw = _b64decode(text)
    if raw is not None and len(raw) != KEY_SIZE:
        inner = _b64decode(raw.decode("ascii", "replace"))
        raw = inner if inner is not None and len(inner) == KEY_SIZE else None
    if raw is None:
        raise CacheConfigError(
            f"{source} must be a base64-encoded {KEY_SIZE}-byte key (e.g. Fernet.generate_key())"
        )
    return raw


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in `path` (base64 text or raw bytes); the file must be mode 0600."""
    try:
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise CacheConfigError(
                f"DG_CACHE_KEY_FILE {path} is mode {stat.S_IMODE(st.st_mode):04o}; "
                f"it must not be readable by group or others (chmod 600 {path})"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise CacheConfigError(f"cannot read DG_CACHE_KEY_FILE {path}: {exc.strerror}") from None
    try:
        return parse_key_text(data.decode("ascii"), f"DG_CACHE_KEY_FILE {path}")
    except (UnicodeDecodeError, CacheConfigError):
        if len(data) == KEY_SIZE:
            return data
        raise CacheConfigError(
            f"DG_CACHE_KEY_FILE {path} must hold a base64-encoded or raw {KEY_SIZE}-byte key"
        ) from None


def _b64decode(text: str) -> bytes | None:
    text = text.strip().replace("+", "-").replace("/", "_")
    if not _B64.match(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _megabytes(name: str, text: str, positive: bool = False) -> int:
    try:
        value = float(text)
    except ValueError:
        raise CacheConfigError(f"{name} must be a number of megabytes, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise CacheConfigError(f"{name} must be a non-negative number of megabytes")
    if positive and value <= 0:
        raise CacheConfigError(f"{name} must be greater than zero")
    return int(value * MiB)
