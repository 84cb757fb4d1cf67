"""The `dgfs` command line (click): mount, umount, server, stats, verify, cache."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from core import __version__
from dgfs import localserver

DEFAULT_DATA_DIR = Path("data/local-s3")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dgfs")
def main() -> None:
    """dgfs: a delta-compressing S3 filesystem, compatible with deltaglider buckets."""


@main.group()
def server() -> None:
    """The local default S3 server (ministack on 127.0.0.1, persistent)."""


@server.command("start")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where the server keeps its objects.",
)
@click.option("--port", type=int, default=None, help="TCP port (default: a free one).")
@click.option("--bucket", "buckets", multiple=True, help="Create this bucket too (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint and env as JSON.")
def server_start(data_dir: Path, port: int | None, buckets: tuple[str, ...], as_json: bool) -> None:
    """Start the server (no-op if it already runs on DATA_DIR) and print its environment.

    \b
    Example:
      eval "$(dgfs server start --bucket demo)"
    """
    from core.config import s3_settings_from_env
    from core.objectstore import ObjectStore

    try:
        srv = localserver.start(data_dir)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    os.environ.update(srv.env())  # boto3 reads the local credentials from the environment
    for name in buckets:
        ObjectStore(name, s3_settings_from_env()).create_bucket()
    if as_json:
        click.echo(json.dumps({"endpoint_url": srv.endpoint_url, "pid": srv.pid, "env": srv.env()}))
    else:
        for key, value in srv.env().items():
            click.echo(f"export {key}={value}")


@server.command("stop")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, show_default=True
)
def server_stop(data_dir: Path) -> None:
    """Stop the server started on DATA_DIR."""
    if not localserver.stop(data_dir):
        click.echo(f"no local S3 server running on {data_dir}", err=True)
        sys.exit(1)
    click.echo("local S3 server stopped")


@server.command("status")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, show_default=True
)
def server_status(data_dir: Path) -> None:
    """Say whether the server runs, and print its environment."""
    srv = localserver.running(data_dir.resolve())
    if srv is None:
        click.echo("stopped")
        sys.exit(1)
    click.echo(f"running pid={srv.pid} endpoint={srv.endpoint_url}")


# ---------------------------------------------------------------- mount / umount

GENERIC_MOUNT_OPTIONS = {
    "rw",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "defaults",
    "async",
    "atime",
    "noatime",
    "relatime",
    "nofail",
    "strictatime",
    "lazytime",
    "owner",
    "group",
    "comment",
    "sync",
    "dirsync",
}
FLAG_OPTIONS = {
    "ro": "read_only",
    "read_only": "read_only",
    "allow_other": "allow_other",
    "path_style": "path_style",
    "no_verify_ssl": "no_verify_ssl",
    "checksum_when_required": "checksum_when_required",
    "nonempty": "nonempty",
    "extensions_only": "extensions_only",
    "foreground": "foreground",
    "suid": "suid",
    "dev": "dev",
}

NEGATED_OPTIONS = {
    "no_dir_index": "dir_index",
    "no_archive_deltas": "archive_deltas",
    "nosuid": "suid",
    "nodev": "dev",
}


def parse_o_options(values: tuple[str, ...]) -> dict[str, str | bool]:
    """`-o a=1,b,rw` → {'a': '1', 'b': True}; generic fstab options are dropped."""
    out: dict[str, str | bool] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            name, sep, val = item.partition("=")
            name = name.strip().replace("-", "_")
            if name in GENERIC_MOUNT_OPTIONS or name.startswith(("x_systemd", "x-systemd")):
                continue
            if name in NEGATED_OPTIONS and not sep:
                out[NEGATED_OPTIONS[name]] = False
                continue
            out[FLAG_OPTIONS.get(name, name)] = val if sep else True
    return out


def _mount_options(f):
    options = [
        click.option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS)."),
        click.option("--profile", help="AWS profile from ~/.aws/config."),
        click.option("--region", help="AWS region."),
        click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground."),
        click.option("--read-only", "--ro", "read_only", is_flag=True, help="Mount read-only."),
        click.option("--allow-other", is_flag=True, help="Let other users see the mount."),
        click.option("--uid", type=int, help="Owner of objects without dgfs metadata."),
        click.option("--gid", type=int, help="Group of objects without dgfs metadata."),
        click.option("--umask", type=str, help="Octal umask for objects without dgfs metadata."),
        click.option(
            "--suid",
            is_flag=True,
            help="Honour setuid/setgid/sticky bits, also those in other tools' metadata.",
        ),
        click.option(
            "--dev", is_flag=True, help="Show device/FIFO/socket types from metadata (-o dev)."
        ),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache directory."),
        click.option("--cache-size", type=int, help="Disk cache bound in MB."),
        click.option("--memory-cache-size", type=int, help="Memory cache bound in MB."),
        click.option("--cache-backend", type=click.Choice(["filesystem", "memory"])),
        click.option(
            "--cache-key-file",
            type=click.Path(path_type=Path),
            help="File (0600) holding the cache key (else DG_CACHE_ENCRYPTION_KEY).",
        ),
        click.option("--max-ratio", type=float, help="Store direct above this delta ratio."),
        click.option("--max-delta-size", type=int, help="Skip delta encoding above this (MB)."),
        click.option(
            "--max-source-window",
            type=int,
            help="Cap on xdelta3's source window in MB (its memory; default 128, or"
            " DG_MAX_SOURCE_WINDOW_MB); larger compresses huge references better.",
        ),
        click.option("--no-delta", multiple=True, help="Glob of keys never delta-encoded."),
        click.option(
            "--reference-policy",
            type=click.Choice(["deltaglider", "adaptive", "adaptive-compatible"]),
            help="Which reference new files are encoded against (DG_REFERENCE_POLICY).",
        ),
        click.option(
            "--archive-deltas/--no-archive-deltas",
            default=None,
            help="Diff zip/wheel/jar/.tar.gz files by their inflated content when that is"
            " smaller (dgfs-only deltas, slower to write and read; default: DG_ARCHIVE_DELTAS"
            " or off, so deltaglider reads every file).",
        ),
        click.option(
            "--exclude",
            multiple=True,
            help="Glob of paths (relative to the mount) hidden and not creatable.",
        ),
        click.option("--extensions-only", is_flag=True, help="deltaglider's extension list only."),
        click.option("--metadata-ttl", type=float, help="Seconds to trust cached metadata."),
        click.option(
            "--dir-index/--no-dir-index",
            default=None,
            help="Use and maintain per-directory index objects (default: DG_DIR_INDEX or on).",
        ),
        click.option("--rename-dir-limit", type=int, help="Max objects moved by a dir rename."),
        click.option(
            "--temp-upload-delay",
            type=float,
            help="Seconds a closed rsync temp file (.NAME.XXXXXX) waits for its rename before"
            " it is uploaded (default 5; 0: at close like any file).",
        ),
        click.option(
            "--write-back",
            type=click.Choice(["sync", "async"], case_sensitive=False),
            help="sync: close() returns once the file is in S3; async: once it is staged"
            " durably on local disk, uploaded in the background (fsync and umount wait for"
            " it). Default: DG_WRITE_BACK or sync.",
        ),
        click.option(
            "--upload-workers",
            type=int,
            help="Background uploads at a time in async mode (default: CPUs, at least 2).",
        ),
        click.option("--path-style", is_flag=True, help="Path-style S3 addressing."),
        click.option("--ca-bundle", type=click.Path(), help="CA bundle for TLS."),
        click.option("--no-verify-ssl", is_flag=True, help="Do not verify TLS certificates."),
        click.option("--connect-timeout", type=float, help="Seconds (default 5)."),
        click.option("--read-timeout", type=float, help="Seconds (default 60)."),
        click.option(
            "--checksum-when-required",
            is_flag=True,
            help="Only send checksums when required (older Ceph/MinIO/Garage).",
        ),
        click.option("--sse", help="Server-side encryption (AES256, aws:kms)."),
        click.option("--sse-kms-key-id", help="KMS key id for aws:kms."),
        click.option("--storage-class", help="Storage class for new objects."),
        click.option("--nonempty", is_flag=True, help="Allow a non-empty mount point."),
        click.option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            help="Default: DG_LOG_LEVEL or INFO.",
        ),
        click.option("--log-file", type=click.Path(path_type=Path), help="Log here, not stderr."),
        click.option(
            "--metrics-addr",
            help="Serve Prometheus metrics on HOST:PORT (127.0.0.1:9101; needs dgfs[metrics]).",
        ),
        click.option("-o", "o_options", multiple=True, help="Mount options: opt[=val],…"),
        click.option("--ready-fd", type=int, hidden=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command("mount")
@click.argument("source")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@_mount_options
@click.pass_context
def mount_cmd(ctx: click.Context, source: str, mountpoint: Path, **kw) -> None:
    """Mount SOURCE (BUCKET[/PREFIX] or s3://BUCKET/PREFIX) on MOUNTPOINT.

    \b
    Examples:
      dgfs mount releases /mnt/releases
      dgfs mount s3://releases/app /mnt/app --endpoint-url http://127.0.0.1:9000
      dgfs mount releases /mnt/r -o ro,allow_other,metadata_ttl=30
    """
    from dgfs import mountcfg

    try:
        cfg, foreground, ready_fd = mountcfg.build(ctx, source, mountpoint, kw, parse_o_options)
    except (ValueError, mountcfg.ConfigProblem) as exc:
        raise click.ClickException(str(exc)) from None
    from dgfs.mount import MountError, run_foreground, spawn_daemon

    try:
        if foreground:
            sys.exit(run_foreground(cfg, ready_fd))
        spawn_daemon(sys.argv[1:], kw.get("log_file"))
    except MountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"mounted s3://{cfg.bucket}/{cfg.fs.prefix} on {mountpoint}")


@main.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", "-z", is_flag=True, help="Detach even if files are open.")
def umount_cmd(mountpoint: Path, lazy: bool) -> None:
    """Unmount MOUNTPOINT after pending uploads; fails if files are open (unless --lazy).

    \b
    Example:
      dgfs umount /mnt/releases
    """
    from dgfs.mount import MountError, unmount

    try:
        failed = unmount(mountpoint, lazy=lazy)
    except MountError as exc:
        raise click.ClickException(str(exc)) from None
    if failed:
        raise click.ClickException(f"unmounted, but {len(failed)} upload(s) failed: {failed}")
    click.echo(f"unmounted {mountpoint}")


@main.command("status")
@click.argument("mountpoint", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--flush", is_flag=True, help="Upload everything pending now; fail if any upload fails."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(mountpoint: Path, flush: bool, as_json: bool) -> None:
    """Show a running mount's pending and failed uploads, S3 requests and cache figures.

    \b
    Examples:
      dgfs status /mnt/releases
      dgfs status /mnt/releases --flush --json
    """
    from dgfs.xattrs import FLUSH_NAME, STATUS_NAME

    try:
        if flush:
            os.setxattr(mountpoint, FLUSH_NAME, b"1")
        state = json.loads(os.getxattr(mountpoint, STATUS_NAME))
    except OSError as exc:
        raise click.ClickException(f"{mountpoint}: {exc.strerror} (is it a dgfs mount?)") from None
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
        return
    cache = state.get("cache", {})
    lookups = cache.get("hits", 0) + cache.get("misses", 0)
    pending, failed = state["pending_uploads"], state["failed_uploads"]
    hidden = " (names shown to the mount's owner only)" if state.get("keys_hidden") else ""
    click.echo(f"pending uploads: {_count(pending)}{hidden}")
    for key in pending if isinstance(pending, list) else ():
        click.echo(f"  {key}")
    wb = state.get("write_back", {})
    if wb.get("mode") == "async":
        click.echo(f"write-back:      async, {wb['running']} running, {wb['queued']} queued")
    click.echo(f"failed uploads:  {_count(failed)}{hidden}")
    for key, why in failed.items() if isinstance(failed, dict) else ():
        click.echo(f"  {key}: {why}")
    requests = ", ".join(f"{k}={v}" for k, v in sorted(state["s3_requests"].items()))
    click.echo(f"S3 requests:     {requests or 'none'}")
    recovery = state.get("recovery", {})
    click.echo(f"crash recovery:  {recovery.get('state', 'n/a')}")
    for line in recovery.get("report", []):
        click.echo(f"  {line}")
    skipped = state.get("delta_attempts_skipped", 0)
    click.echo(f"delta attempts skipped (recent ones stored direct): {skipped}")
    hopeless = state.get("delta_attempts_estimated_hopeless", 0)
    click.echo(f"delta attempts skipped (similarity estimate too low): {hopeless}")
    rate = f"{cache.get('hits', 0) / lookups:.1%}" if lookups else "n/a"
    click.echo(
        f"cache hit rate:  {rate} ({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)"
    )


def _count(value: int | list | dict) -> int:
    """A status list's length (the number itself when the names are hidden)."""
    return value if isinstance(value, int) else len(value)


def run(args: list[str] | None = None, prog_name: str = "dgfs") -> None:
    """Entry point; `dgfs SOURCE MOUNTPOINT -o …` (as mount.fuse3 runs it) means `dgfs mount`."""
    argv = list(sys.argv[1:] if args is None else args)
    if len(argv) >= 2 and argv[0] not in main.commands and not argv[0].startswith("-"):
        from dgfs.fstab import to_mount_argv

        argv = to_mount_argv(argv)
    sys.argv[1:] = argv  # `dgfs mount` re-executes itself in the background with these
    main.main(args=argv, prog_name=prog_name)


__import__("dgfs.cli_stats", fromlist=["register"]).register(main)  # stats/gc/verify/cache
main.add_command(__import__("dgfs.cli_doctor", fromlist=["doctor_cmd"]).doctor_cmd)
if __name__ == "__main__":
    run()
