"""`dgfs doctor s3://BUCKET`: which S3 features the endpoint really honours (core/capabilities)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from core import capabilities
from core.config import s3_settings_from_env
from core.objectstore import ObjectStore
from dgfs.cli_stats import one_line_errors, parse_url

_WORDS = {True: "yes", False: "NO", None: "unknown"}


@click.command("doctor")
@click.argument("url")
@click.option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS).")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Where the result is cached (default: the dgfs cache dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def doctor_cmd(url: str, endpoint_url: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """Probe the S3 features dgfs relies on, on the endpoint serving s3://BUCKET.

    Writes and deletes a few small objects under BUCKET/.dgfs/probe/<uuid>/, prints what the
    server honours and caches the result for mounts (DG_CAPS_TTL seconds, default a day).

    \b
    Examples:
      dgfs doctor s3://releases
      dgfs doctor s3://releases --endpoint-url http://127.0.0.1:7480 --json
    """
    bucket, _ = parse_url(url)
    with one_line_errors():
        settings = s3_settings_from_env(endpoint_url=endpoint_url)
        # fail fast on a dead endpoint, as mount does
        settings = replace(
            settings, max_attempts=2, connect_timeout=min(settings.connect_timeout, 3.0)
        )
        store = ObjectStore(bucket, settings)
        store.check_bucket()
        caps = capabilities.probe(store)
        capabilities.save(capabilities.cache_file(cache_dir), caps)
    if as_json:
        click.echo(json.dumps(caps.to_json(), indent=2, sort_keys=True))
        return
    click.echo(f"endpoint: {caps.endpoint}")
    width = max(len(text) for text in capabilities.CAPABILITIES.values())
    for name, text in capabilities.CAPABILITIES.items():
        ok = caps.results.get(name)
        click.echo(f"  {text:<{width}}  {_WORDS[ok]:<7}  {caps.details.get(name, '')}")
    if not caps.has("conditional_put"):
        click.echo(
            "conditional PUT missing: mounts create references with create-then-verify and "
            "refuse --reference-policy adaptive (docs/SEMANTICS.md)"
        )
