"""Turn `dgfs mount` options (flags, `-o` strings, environment) into a MountConfig."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from core.cache import CacheConfigError, CacheSettings
from core.config import (
    ConfigError,
    delta_settings_from_env,
    dir_index_enabled,
    s3_settings_from_env,
)
from dgfs.logfmt import EscapingFormatter
from dgfs.mount import MountConfig
from dgfs.options import FsOptions, parse_source, write_back_mode

INT_OPTIONS = {
    "uid",
    "gid",
    "cache_size",
    "memory_cache_size",
    "max_delta_size",
    "max_source_window",
    "rename_dir_limit",
    "upload_workers",
    "ready_fd",
}
PATTERN_OPTIONS = {"no_delta", "exclude"}
FLOAT_OPTIONS = {
    "max_ratio",
    "metadata_ttl",
    "connect_timeout",
    "read_timeout",
    "temp_upload_delay",
}


class ConfigProblem(Exception):
    """An option value that cannot be used."""


def _merge(ctx: click.Context, kw: dict, o_values: dict) -> dict:
    """Explicit command-line flags win over `-o` values, which win over defaults.

    Patterns (`no_delta`, `exclude`; several in one `-o` value separated by ':') add up.
    """
    merged = dict(kw)
    for name, value in o_values.items():
        if name not in kw:
            raise ConfigProblem(f"unknown mount option -o {name}")
        if name in PATTERN_OPTIONS:
            merged[name] = tuple(merged[name] or ()) + tuple(str(value).split(":"))
            continue
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            continue
        if name in INT_OPTIONS:
            merged[name] = _convert(name, value, int)
        elif name in FLOAT_OPTIONS:
            merged[name] = _convert(name, value, float)
        else:
            merged[name] = value
    return merged


def _convert(name: str, value, kind):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigProblem(f"-o {name}={value}: not a number") from None


def setup_logging(level: str | None, log_file: Path | None) -> None:
    """Greppable log lines (time, level, logger, escaped message) to stderr or a file."""
    level = (level or os.environ.get("DG_LOG_LEVEL") or "INFO").upper()
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def build(ctx: click.Context, source: str, mountpoint: Path, kw: dict, parse_o):
    """(MountConfig, foreground, ready_fd) from the mount command's arguments."""
    opts = _merge(ctx, kw, parse_o(kw.pop("o_options", ())))
    setup_logging(opts.get("log_level"), opts.get("log_file"))
    bucket, prefix = parse_source(source)
    try:
        s3 = s3_settings_from_env(
            endpoint_url=opts.get("endpoint_url"),
            region=opts.get("region"),
            profile=opts.get("profile"),
            path_style=opts.get("path_style") or None,
            ca_bundle=opts.get("ca_bundle"),
            verify_tls=False if opts.get("no_verify_ssl") else None,
            connect_timeout=opts.get("connect_timeout"),
            read_timeout=opts.get("read_timeout"),
            checksum_when_required=opts.get("checksum_when_required") or None,
            sse=opts.get("sse"),
            sse_kms_key_id=opts.get("sse_kms_key_id"),
            storage_class=opts.get("storage_class"),
        )
        max_delta = opts.get("max_delta_size")
        window = opts.get("max_source_window")
        delta = delta_settings_from_env(
            max_ratio=opts.get("max_ratio"),
            max_delta_size=max_delta * 2**20 if max_delta else None,
            extensions_only=opts.get("extensions_only") or None,
            no_delta_patterns=tuple(opts.get("no_delta") or ()) or None,
            reference_policy=opts.get("reference_policy"),
            archive_deltas=opts.get("archive_deltas"),
            max_source_window=window * 2**20 if window else None,
        )
        cache = CacheSettings.from_env(
            key_file=opts.get("cache_key_file"),
            backend=opts.get("cache_backend"),
            cache_dir=opts.get("cache_dir"),
            disk_limit_bytes=opts["cache_size"] * 2**20 if opts.get("cache_size") else None,
            memory_limit_bytes=(
                opts["memory_cache_size"] * 2**20 if opts.get("memory_cache_size") else None
            ),
        )
    except (ConfigError, CacheConfigError) as exc:
        raise ConfigProblem(str(exc)) from None
    try:
        write_back = write_back_mode(opts.get("write_back"))
    except ValueError as exc:
        raise ConfigProblem(str(exc)) from None
    if opts.get("upload_workers") is not None and opts["upload_workers"] < 1:
        raise ConfigProblem("upload workers: at least 1")
    fs = FsOptions(
        cache_base=cache.cache_dir,
        write_back=write_back,
        prefix=prefix,
        read_only=bool(opts.get("read_only")),
        exclude=tuple(opts.get("exclude") or ()),
        dir_index=dir_index_enabled(opts.get("dir_index")),
        suid=bool(opts.get("suid")),
        dev=bool(opts.get("dev")),
    )
    names = ("uid", "gid", "metadata_ttl", "rename_dir_limit", "temp_upload_delay")
    for name in (*names, "upload_workers"):
        if opts.get(name) is not None:
            setattr(fs, name, opts[name])
    if opts.get("umask"):
        try:
            fs.umask = int(str(opts["umask"]), 8)
        except ValueError:
            raise ConfigProblem(f"umask {opts['umask']!r} is not octal") from None
    metrics_addr = None
    if opts.get("metrics_addr"):
        from dgfs import metrics

        try:
            metrics_addr = metrics.parse_addr(opts["metrics_addr"])
            metrics.check_available()
        except ValueError as exc:
            raise ConfigProblem(str(exc)) from None
    cfg = MountConfig(
        bucket=bucket,
        mountpoint=mountpoint,
        s3=s3,
        delta=delta,
        cache=cache,
        fs=fs,
        allow_other=bool(opts.get("allow_other")),
        nonempty=bool(opts.get("nonempty")),
        metrics_addr=metrics_addr,
    )
    return cfg, bool(opts.get("foreground")), opts.get("ready_fd")
