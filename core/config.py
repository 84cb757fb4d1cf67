"""Settings read once from the environment (deltaglider's `DG_*`, boto3's `AWS_*`) and options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

REFERENCE_POLICIES = ("deltaglider", "adaptive", "adaptive-compatible")

# deltaglider's extension list: the compat policy (`DG_DELTA_EXTENSIONS_ONLY=1`).
DELTAGLIDER_EXTENSIONS = (
    ".tar.gz",
    ".tar.bz2",
    ".tar.xz",
    ".zip",
    ".tar",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".7z",
    ".rar",
    ".dmg",
    ".iso",
    ".pkg",
    ".deb",
    ".rpm",
    ".apk",
    ".jar",
    ".war",
    ".ear",
)


class ConfigError(ValueError):
    """A setting has a value that cannot be used (one-line message)."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store. `None` means: let boto3's standard chain decide."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False
    ca_bundle: str | None = None
    verify_tls: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    max_pool_connections: int = 32
    checksum_when_required: bool = False
    sse: str | None = None
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    multipart_threshold: int = 64 * 2**20
    multipart_chunksize: int = 16 * 2**20


@dataclass(frozen=True)
class DeltaSettings:
    """When a file is stored as an xdelta3 delta and when directly."""

    max_ratio: float = 0.5
    min_delta_size: int = 1024
    max_delta_size: int = 4 * 2**30
    extensions_only: bool = False
    no_delta_patterns: tuple[str, ...] = field(default_factory=tuple)
    reference_policy: str = "deltaglider"  # deltaglider | adaptive | adaptive-compatible
    # dgfs-only archive deltas (core/archivedelta.py): zip/gzip files diffed by their inflated
    # content when that is smaller. Off by default (measured: docs/benchmarks.md; reads of
    # such files take seconds of re-deflating), so every delta stays deltaglider-readable
    archive_deltas: bool = False
    # cap on xdelta3's source window (-B), ~1/3 of an encode's memory: bounds memory for any
    # file size; larger references lose matches beyond it (DG_MAX_SOURCE_WINDOW_MB)
    max_source_window: int = 128 * 2**20


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def dir_index_enabled(
    value: bool | str | None = None, env: Mapping[str, str] | None = None
) -> bool:
    """Whether directory index objects are used: `value` (flag or `-o` text) if given, else
    `DG_DIR_INDEX` (default on)."""
    if isinstance(value, bool):
        return value
    env = os.environ if env is None else env
    text = value if value is not None else env.get("DG_DIR_INDEX", "1")
    return _flag(text) if text.strip() else True


def flag_value(value: bool | str | None) -> bool | None:
    """A flag given as a bool or as `-o` text (1/0, true/false, yes/no, on/off); None: unset."""
    if value is None or isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} is not a flag value (1/0, on/off, true/false, yes/no)")


def _number(name: str, value: str, kind: type = float) -> float | int:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None


def s3_settings_from_env(env: Mapping[str, str] | None = None, **overrides) -> S3Settings:
    """S3 settings from `AWS_*`/`DG_*` variables; keyword overrides that are not None win."""
    env = os.environ if env is None else env
    values: dict = {}
    if env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        values["endpoint_url"] = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if env.get("DG_S3_PATH_STYLE"):
        values["path_style"] = _flag(env["DG_S3_PATH_STYLE"])
    if env.get("AWS_CA_BUNDLE"):
        values["ca_bundle"] = env["AWS_CA_BUNDLE"]
    if env.get("DG_S3_CHECKSUM_WHEN_REQUIRED"):
        values["checksum_when_required"] = _flag(env["DG_S3_CHECKSUM_WHEN_REQUIRED"])
    elif env.get("AWS_REQUEST_CHECKSUM_CALCULATION", "").lower() == "when_required":
        values["checksum_when_required"] = True
    for name, attr in (
        ("DG_S3_CONNECT_TIMEOUT", "connect_timeout"),
        ("DG_S3_READ_TIMEOUT", "read_timeout"),
    ):
        if env.get(name):
            values[attr] = _number(name, env[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = S3Settings(**values)
    if settings.connect_timeout <= 0 or settings.read_timeout <= 0:
        raise ConfigError("timeouts must be positive")
    return settings


def delta_settings_from_env(env: Mapping[str, str] | None = None, **overrides) -> DeltaSettings:
    """Delta policy from `DG_MAX_RATIO`, `DG_MIN_DELTA_SIZE`, `DG_DELTA_EXTENSIONS_ONLY`,
    `DG_REFERENCE_POLICY`, `DG_ARCHIVE_DELTAS`, `DG_MAX_SOURCE_WINDOW_MB`."""
    env = os.environ if env is None else env
    values: dict = {}
    if env.get("DG_MAX_RATIO"):
        values["max_ratio"] = _number("DG_MAX_RATIO", env["DG_MAX_RATIO"])
    if env.get("DG_MIN_DELTA_SIZE"):
        values["min_delta_size"] = int(_number("DG_MIN_DELTA_SIZE", env["DG_MIN_DELTA_SIZE"], int))
    if env.get("DG_MAX_DELTA_SIZE_MB"):
        mb = _number("DG_MAX_DELTA_SIZE_MB", env["DG_MAX_DELTA_SIZE_MB"], int)
        values["max_delta_size"] = int(mb) * 2**20
    if env.get("DG_MAX_SOURCE_WINDOW_MB"):
        mb = _number("DG_MAX_SOURCE_WINDOW_MB", env["DG_MAX_SOURCE_WINDOW_MB"], int)
        values["max_source_window"] = int(mb) * 2**20
    if env.get("DG_DELTA_EXTENSIONS_ONLY"):
        values["extensions_only"] = _flag(env["DG_DELTA_EXTENSIONS_ONLY"])
    if env.get("DG_NO_DELTA"):
        values["no_delta_patterns"] = tuple(p for p in env["DG_NO_DELTA"].split(",") if p)
    if env.get("DG_REFERENCE_POLICY"):
        values["reference_policy"] = env["DG_REFERENCE_POLICY"]
    if env.get("DG_ARCHIVE_DELTAS", "").strip():
        values["archive_deltas"] = flag_value(env["DG_ARCHIVE_DELTAS"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "archive_deltas" in values:
        values["archive_deltas"] = flag_value(values["archive_deltas"])
    if "reference_policy" in values:
        values["reference_policy"] = values["reference_policy"].strip().lower()
    settings = DeltaSettings(**values)
    if settings.reference_policy not in REFERENCE_POLICIES:
        raise ConfigError(
            f"reference policy {settings.reference_policy!r} is not one of "
            + ", ".join(REFERENCE_POLICIES)
        )
    if settings.max_source_window < 2**20:
        raise ConfigError(
            f"max source window must be at least 1 MiB, got {settings.max_source_window}"
        )
    if not 0.0 < settings.max_ratio <= 1.0:
        raise ConfigError(f"max ratio must be in (0, 1], got {settings.max_ratio}")
    return settings
