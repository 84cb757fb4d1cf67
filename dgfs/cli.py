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
